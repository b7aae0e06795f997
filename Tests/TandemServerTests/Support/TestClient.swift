#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `close(2)`, out of the way of `TestClient.close()`.
private func systemClose(_ fd: Int32) {
    _ = close(fd)
}

/// `send(2)`, out of the way of `TestClient.send(_:)`.
private func systemSend(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ flags: Int32) -> Int {
    send(fd, buffer, count, flags)
}

/// What can go wrong talking to the server.
enum TestClientError: Error, CustomStringConvertible {
    case connect(errno: Int32)
    case io(String, errno: Int32)
    /// Waited too long; what had arrived so far is kept for the failure message.
    case timeout(waitingFor: String, received: String)
    /// The server closed the connection before the expected bytes arrived.
    case closed(waitingFor: String, received: String)

    var description: String {
        switch self {
        case .connect(let code): return "connect failed: errno \(code)"
        case .io(let what, let code): return "\(what) failed: errno \(code)"
        case .timeout(let what, let received): return "timed out waiting for \(what); received so far: \(received.debugDescription)"
        case .closed(let what, let received): return "connection closed while waiting for \(what); received: \(received.debugDescription)"
        }
    }
}

/// A deliberately dumb memcached client for live tests: a non-blocking TCP
/// socket to 127.0.0.1, literal bytes out, raw bytes in, every wait bounded
/// by a deadline (no sleeps). Not thread-safe: one task (or thread) drives one
/// client at a time.
///
/// Every blocking operation has an `async` overload (in `TestClient+Async`)
/// that runs it on a dedicated thread pool: tests `await` those, so a test
/// waiting for the server never holds one of Swift concurrency's few
/// cooperative threads (two on a two-core machine), which the server's
/// `shutdown()` and every other test need. The blocking versions remain for
/// code that already runs on its own thread.
final class TestClient: @unchecked Sendable {
    /// How long any single wait may take before the test fails.
    static let defaultTimeout: Duration = .seconds(10)

    private var fd: Int32
    /// Bytes received but not yet consumed by a read.
    private var pending: [UInt8] = []
    /// Whether the peer closed (EOF or reset).
    private(set) var peerClosed = false

    /// Connects to `host:port`. A small `receiveBufferSize` keeps the TCP
    /// window small, so the server's replies back up on its side.
    init(port: Int, host: String = "127.0.0.1", receiveBufferSize: Int32? = nil) throws {
        #if canImport(Glibc) || canImport(Musl)
        let socketType = Int32(SOCK_STREAM.rawValue)
        #else
        let socketType = SOCK_STREAM
        #endif
        fd = socket(AF_INET, socketType, 0)
        guard fd >= 0 else { throw TestClientError.connect(errno: errno) }
        if var size = receiveBufferSize {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        _ = inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            systemClose(fd)
            throw TestClientError.connect(errno: code)
        }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    deinit {
        if fd >= 0 { systemClose(fd) }
    }

    /// Closes the socket (idempotent).
    func close() {
        if fd >= 0 {
            systemClose(fd)
            fd = -1
        }
    }

    /// Everything received so far and not consumed, as text (for diagnostics).
    var unconsumed: String { String(decoding: pending, as: UTF8.self) }

    // MARK: Writing

    func send(_ text: String, timeout: Duration = defaultTimeout) throws {
        try send(Array(text.utf8), timeout: timeout)
    }

    /// Writes all of `bytes` (as few `send` calls as the kernel allows). While
    /// the socket is full, whatever the server sends back is read into the
    /// pending buffer, so a large pipeline cannot deadlock against its replies.
    func send(_ bytes: [UInt8], timeout: Duration = defaultTimeout) throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                systemSend(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                offset += written
                continue
            }
            let code = errno
            if written < 0 && code == EINTR { continue }
            guard written < 0, code == EAGAIN || code == EWOULDBLOCK else {
                throw TestClientError.io("send", errno: code)
            }
            let ready = try wait(for: Int16(POLLOUT) | Int16(POLLIN), until: deadline, what: "the socket to accept more bytes")
            if ready & Int16(POLLIN) != 0 { _ = try receiveAvailable() }
        }
    }

    /// Writes as much of `bytes` as the server takes, until it closes the
    /// connection or 30 s pass. Never reads, so one thread may call this while
    /// another reads the replies. Returns how many bytes went out.
    @discardableResult
    func sendUntilRefused(_ bytes: [UInt8]) -> Int {
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                systemSend(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                offset += written
                continue
            }
            let code = errno
            if written < 0 && code == EINTR { continue }
            guard written < 0, code == EAGAIN || code == EWOULDBLOCK else { return offset }
            guard (try? wait(for: Int16(POLLOUT), until: deadline, what: "room to send", quoteReceived: false)) != nil else {
                return offset
            }
        }
        return offset
    }

    /// Sends one byte per `send` call: the server sees the command stream cut at every boundary.
    func sendByteByByte(_ text: String) throws {
        for byte in text.utf8 { try send([byte]) }
    }

    // MARK: Reading

    /// Reads until `terminator` has arrived and returns everything up to and
    /// including its first occurrence.
    func read(until terminator: String, timeout: Duration = defaultTimeout) throws -> String {
        String(decoding: try readBytes(until: Array(terminator.utf8), timeout: timeout), as: UTF8.self)
    }

    func readBytes(until terminator: [UInt8], timeout: Duration = defaultTimeout) throws -> [UInt8] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var searchFrom = 0
        while true {
            if let end = Self.find(terminator, in: pending, from: searchFrom) {
                let result = Array(pending[..<end])
                pending.removeFirst(end)
                return result
            }
            searchFrom = max(0, pending.count - terminator.count + 1)
            try fill(until: deadline, what: String(decoding: terminator, as: UTF8.self).debugDescription)
        }
    }

    /// Reads one reply line, `\r\n` included.
    func readLine(timeout: Duration = defaultTimeout) throws -> String {
        try read(until: "\r\n", timeout: timeout)
    }

    /// Reads exactly `count` bytes.
    func readBytes(count: Int, timeout: Duration = defaultTimeout) throws -> [UInt8] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while pending.count < count {
            try fill(until: deadline, what: "\(count) bytes")
        }
        let result = Array(pending[..<count])
        pending.removeFirst(count)
        return result
    }

    /// Reads until the server closes the connection (EOF or reset) and returns
    /// everything that arrived. Throws if it stays open past the timeout.
    func readUntilClosed(timeout: Duration = defaultTimeout) throws -> [UInt8] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while !peerClosed {
            do {
                try fill(until: deadline, what: "the server to close the connection")
            } catch TestClientError.closed {
                break
            }
        }
        defer { pending.removeAll() }
        return pending
    }

    // MARK: Conveniences

    /// Sends `request` followed by `mn`, waits for the `MN` that closes the
    /// exchange, and returns every reply byte before it. Replies come in
    /// order, so this is exactly what `request` produced: an empty string
    /// means it produced no reply at all (noreply, quiet mode).
    func exchange(_ request: String, timeout: Duration = defaultTimeout) throws -> String {
        try send(request + "mn\r\n", timeout: timeout)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var searchFrom = 0
        let marker = Array("MN\r\n".utf8)
        while true {
            // The marker counts only at the start of a reply line.
            while let end = Self.find(marker, in: pending, from: searchFrom) {
                let start = end - marker.count
                if start == 0 || pending[start - 1] == UInt8(ascii: "\n") {
                    let reply = String(decoding: pending[..<start], as: UTF8.self)
                    pending.removeFirst(end)
                    return reply
                }
                searchFrom = start + 1
            }
            searchFrom = max(0, pending.count - marker.count + 1)
            try fill(until: deadline, what: "MN after \(request.prefix(200).debugDescription)")
        }
    }

    /// The current CAS of `key`, read with `mg key c`.
    func cas(_ key: String) throws -> UInt64 {
        let reply = try exchange("mg \(key) c\r\n")
        guard reply.hasPrefix("HD c"), let value = UInt64(reply.dropFirst(4).prefix(while: \.isNumber)) else {
            throw TestClientError.io("cas of \(key): unexpected reply \(reply.debugDescription)", errno: 0)
        }
        return value
    }

    /// `stats [group]` parsed into name → value.
    func stats(_ group: String = "") throws -> [String: String] {
        let reply = try exchange(group.isEmpty ? "stats\r\n" : "stats \(group)\r\n")
        var result: [String: String] = [:]
        for line in reply.split(separator: "\r\n") where line.hasPrefix("STAT ") {
            let parts = line.split(separator: " ", maxSplits: 2)
            if parts.count == 3 { result[String(parts[1])] = String(parts[2]) }
        }
        return result
    }

    // MARK: Internals

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
        let first = needle[0]
        var index = max(0, start)
        let last = haystack.count - needle.count
        while index <= last {
            if haystack[index] == first {
                var matched = true
                for offset in 1..<needle.count where haystack[index + offset] != needle[offset] {
                    matched = false
                    break
                }
                if matched { return index + needle.count }
            }
            index += 1
        }
        return nil
    }

    /// Waits for readable bytes and appends them to `pending`.
    private func fill(until deadline: ContinuousClock.Instant, what: String) throws {
        if peerClosed { throw TestClientError.closed(waitingFor: what, received: unconsumed) }
        if try receiveAvailable() > 0 { return }
        if peerClosed { throw TestClientError.closed(waitingFor: what, received: unconsumed) }
        _ = try wait(for: Int16(POLLIN), until: deadline, what: what)
        _ = try receiveAvailable()
        if peerClosed && pending.isEmpty { throw TestClientError.closed(waitingFor: what, received: unconsumed) }
    }

    /// Reads whatever is available without blocking. Returns the byte count.
    private func receiveAvailable() throws -> Int {
        var total = 0
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count > 0 {
                pending.append(contentsOf: chunk[..<count])
                total += count
                continue
            }
            if count == 0 {
                peerClosed = true
                return total
            }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return total }
            if code == ECONNRESET || code == EPIPE {
                peerClosed = true
                return total
            }
            throw TestClientError.io("recv", errno: code)
        }
    }

    /// Polls until one of `events` or the deadline.
    /// `quoteReceived: false` leaves the receive buffer alone (for a writer thread while another thread reads).
    private func wait(
        for events: Int16, until deadline: ContinuousClock.Instant, what: String, quoteReceived: Bool = true
    ) throws -> Int16 {
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            if left <= .zero { throw TestClientError.timeout(waitingFor: what, received: quoteReceived ? unconsumed : "") }
            let millis = max(1, Int32(min(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000, 60_000)))
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let result = poll(&descriptor, 1, millis)
            if result > 0 { return descriptor.revents }
            if result < 0 && errno != EINTR { throw TestClientError.io("poll", errno: errno) }
        }
    }
}
