import NIOPosix

/// Threads for the tests' blocking socket work, so that it never occupies the
/// cooperative pool. Started once, never stopped (it lives as long as the test process).
let blockingIOPool: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: 16)
    pool.start()
    return pool
}()

/// Runs blocking `body` on `blockingIOPool` and waits for it without blocking the caller's thread.
func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await blockingIOPool.runIfActive(body)
}

/// The `async` face of `TestClient`: each call runs the blocking version on
/// `blockingIOPool`. In an `async` context these are the overloads chosen.
extension TestClient {
    func send(_ text: String, timeout: Duration = defaultTimeout) async throws {
        try await offload { try self.send(text, timeout: timeout) }
    }

    func send(_ bytes: [UInt8], timeout: Duration = defaultTimeout) async throws {
        try await offload { try self.send(bytes, timeout: timeout) }
    }

    func sendByteByByte(_ text: String) async throws {
        try await offload { try self.sendByteByByte(text) }
    }

    func read(until terminator: String, timeout: Duration = defaultTimeout) async throws -> String {
        try await offload { try self.read(until: terminator, timeout: timeout) }
    }

    func readLine(timeout: Duration = defaultTimeout) async throws -> String {
        try await offload { try self.readLine(timeout: timeout) }
    }

    func readBytes(count: Int, timeout: Duration = defaultTimeout) async throws -> [UInt8] {
        try await offload { try self.readBytes(count: count, timeout: timeout) }
    }

    func readUntilClosed(timeout: Duration = defaultTimeout) async throws -> [UInt8] {
        try await offload { try self.readUntilClosed(timeout: timeout) }
    }

    func exchange(_ request: String, timeout: Duration = defaultTimeout) async throws -> String {
        try await offload { try self.exchange(request, timeout: timeout) }
    }

    func cas(_ key: String) async throws -> UInt64 {
        try await offload { try self.cas(key) }
    }

    func stats(_ group: String = "") async throws -> [String: String] {
        try await offload { try self.stats(group) }
    }
}
