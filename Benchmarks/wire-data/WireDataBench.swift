// The data path side by side: TandemClient's typed get/set over the wire
// protocol, and the memcached text protocol through a pipelined client, on
// the same tandemd, with the same work (Benchmarks/wire-data.sh runs it).
//
//     wire-data-bench <host> <memcached port> <wire port> [seconds] [connections] [in flight per connection]
//
// Workload: 10,000 keys of 2,048-byte values stored first; then, for each
// protocol in turn (memcached, wire, memcached, wire: two rounds), every
// worker runs 90% get / 10% set on uniformly random keys, one request at a
// time; `connections × in flight` workers share `connections` connections,
// so each connection carries `in flight` pipelined requests. Every value
// read is checked. Reported: requests per second, p50 and p99 latency.

import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemClient

let arguments = CommandLine.arguments
guard arguments.count >= 4, let memcachedPort = Int(arguments[2]), let wirePort = Int(arguments[3]) else {
    print("usage: wire-data-bench <host> <memcached port> <wire port> [seconds] [connections] [in flight per connection]")
    exit(1)
}
let host = arguments[1]
let seconds = arguments.count > 4 ? Int(arguments[4]) ?? 5 : 5
let connections = arguments.count > 5 ? Int(arguments[5]) ?? 4 : 4
let inFlight = arguments.count > 6 ? Int(arguments[6]) ?? 16 : 16
let keyCount = 10_000
let valueSize = 2048

func value(for index: Int, version: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: UInt8(ascii: "a") + UInt8(version % 26), count: valueSize)
    let tag = Array("\(index):".utf8)
    bytes.replaceSubrange(0..<tag.count, with: tag)
    return bytes
}

/// The two clients' common face.
protocol BenchClient: Sendable {
    func get(_ key: String) async throws -> [UInt8]?
    func set(_ key: String, value: [UInt8]) async throws
}

extension TandemClient: BenchClient {
    func get(_ key: String) async throws -> [UInt8]? {
        let item: TandemItem? = try await get(key)
        return item?.value
    }

    func set(_ key: String, value: [UInt8]) async throws {
        _ = try await set(key, value: value, flags: 0, expiry: .never)
    }
}

// MARK: A pipelined memcached text client

enum BenchError: Error {
    case unexpectedReply(String)
}

/// Replies in the order requests were sent (memcached answers in order).
final class MemcachedHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Reply: Sendable {
        case value([UInt8]?)
        case stored
        /// Any other line (an error): the run stops on it.
        case other(String)
    }

    private struct State {
        var waiting = CircularBuffer<EventLoopPromise<Reply>>()
        var buffer = ByteBuffer()
        var pendingValue: [UInt8]?
    }

    private let state = NIOLockedValueBox(State())

    func enqueue(_ promise: EventLoopPromise<Reply>) {
        state.withLockedValue { $0.waiting.append(promise) }
    }

    /// The node went away: every request still waiting fails (the run stops).
    func channelInactive(context: ChannelHandlerContext) {
        let waiting = state.withLockedValue { state in
            defer { state.waiting.removeAll() }
            return Array(state.waiting)
        }
        for promise in waiting { promise.fail(ChannelError.ioOnClosedChannel) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        var done: [(EventLoopPromise<Reply>, Reply)] = []
        state.withLockedValue { state in
            state.buffer.writeBuffer(&incoming)
            while let line = state.buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let length = line - state.buffer.readerIndex + 1
                let text = String(decoding: state.buffer.getBytes(at: state.buffer.readerIndex, length: length - 2)!, as: UTF8.self)
                if text.hasPrefix("VALUE ") {
                    let size = Int(text.split(separator: " ")[3])!
                    guard state.buffer.readableBytes >= length + size + 2 else { return }
                    state.buffer.moveReaderIndex(forwardBy: length)
                    state.pendingValue = state.buffer.readBytes(length: size)
                    state.buffer.moveReaderIndex(forwardBy: 2)
                    continue
                }
                state.buffer.moveReaderIndex(forwardBy: length)
                guard let promise = state.waiting.popFirst() else { fatalError("a reply to no request: \(text)") }
                switch text {
                case "END":
                    done.append((promise, .value(state.pendingValue)))
                    state.pendingValue = nil
                case "STORED":
                    done.append((promise, .stored))
                default:
                    done.append((promise, .other(text)))
                }
            }
            state.buffer.discardReadBytes()
        }
        for (promise, reply) in done { promise.succeed(reply) }
    }
}

final class MemcachedClient: BenchClient {
    let channel: any Channel
    let handler: MemcachedHandler

    init(host: String, port: Int) async throws {
        let handler = MemcachedHandler()
        self.handler = handler
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .connect(host: host, port: port).get()
    }

    private func send(_ request: ByteBuffer) async throws -> MemcachedHandler.Reply {
        let promise = channel.eventLoop.makePromise(of: MemcachedHandler.Reply.self)
        // Enqueued and written on the event loop, so the order of the
        // promises is the order of the requests on the socket.
        channel.eventLoop.execute { [handler, channel] in
            guard channel.isActive else { return promise.fail(ChannelError.ioOnClosedChannel) }
            handler.enqueue(promise)
            channel.writeAndFlush(request, promise: nil)
        }
        return try await promise.futureResult.get()
    }

    func get(_ key: String) async throws -> [UInt8]? {
        var request = channel.allocator.buffer(capacity: key.utf8.count + 6)
        request.writeString("get \(key)\r\n")
        let reply = try await send(request)
        guard case .value(let value) = reply else { throw BenchError.unexpectedReply("get: \(reply)") }
        return value
    }

    func set(_ key: String, value: [UInt8]) async throws {
        var request = channel.allocator.buffer(capacity: key.utf8.count + value.count + 32)
        request.writeString("set \(key) 0 0 \(value.count)\r\n")
        request.writeBytes(value)
        request.writeString("\r\n")
        let reply = try await send(request)
        guard case .stored = reply else { throw BenchError.unexpectedReply("set: \(reply)") }
    }
}

// MARK: The run

struct RunResult {
    var requests: Int
    var seconds: Double
    var latenciesMicros: [Int]

    func percentile(_ p: Double) -> Int {
        let sorted = latenciesMicros.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }
}

/// Runs the mixed workload for `seconds` over `clients` (workers share them round robin).
func run(clients: [any BenchClient], seconds: Int) async throws -> RunResult {
    let clock = ContinuousClock()
    let start = clock.now
    let end = start.advanced(by: .seconds(seconds))
    let workers = clients.count * inFlight
    let results = try await withThrowingTaskGroup(of: [Int].self) { group in
        for worker in 0..<workers {
            let client = clients[worker % clients.count]
            group.addTask {
                var generator = SystemRandomNumberGenerator()
                var latencies: [Int] = []
                latencies.reserveCapacity(100_000)
                var version = 1
                while clock.now < end {
                    let index = Int.random(in: 0..<keyCount, using: &generator)
                    let began = clock.now
                    if Int.random(in: 0..<10, using: &generator) == 0 {
                        version += 1
                        try await client.set("key:\(index)", value: value(for: index, version: version))
                    } else {
                        let read = try await client.get("key:\(index)")
                        // The value carries its key's index: a reply matched to the wrong request shows.
                        guard let read, read.count == valueSize, read.starts(with: Array("\(index):".utf8)) else {
                            fatalError("wrong value for key:\(index)")
                        }
                    }
                    let elapsed = began.duration(to: clock.now).components
                    latencies.append(Int(elapsed.seconds * 1_000_000 + elapsed.attoseconds / 1_000_000_000_000))
                }
                return latencies
            }
        }
        var all: [Int] = []
        for try await latencies in group { all += latencies }
        return all
    }
    let elapsed = start.duration(to: clock.now).components
    return RunResult(requests: results.count, seconds: Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18, latenciesMicros: results)
}

var memcachedClients: [any BenchClient] = []
var wireClients: [any BenchClient] = []
for _ in 0..<connections {
    memcachedClients.append(try await MemcachedClient(host: host, port: memcachedPort))
    wireClients.append(try await TandemClient.connect(host: host, port: wirePort, maxInFlight: inFlight))
}
// Store every key once (through memcached: both protocols reach the same items).
try await withThrowingTaskGroup(of: Void.self) { group in
    for lane in 0..<connections * inFlight {
        let client = memcachedClients[lane % connections]
        group.addTask {
            for index in stride(from: lane, to: keyCount, by: connections * inFlight) {
                try await client.set("key:\(index)", value: value(for: index, version: 0))
            }
        }
    }
    try await group.waitForAll()
}
print("# \(keyCount) keys × \(valueSize) B; 90% get / 10% set; \(connections) connections × \(inFlight) in flight; \(seconds) s per run, two rounds")
print("| protocol | round | req/s | p50 µs | p99 µs |")
print("|---|---|---|---|---|")
var totals: [String: (requests: Int, seconds: Double, latencies: [Int])] = [:]
for round in 1...2 {
    for (name, clients) in [("memcached text", memcachedClients), ("wire (TandemClient)", wireClients)] {
        let result = try await run(clients: clients, seconds: seconds)
        print("| \(name) | \(round) | \(Int(Double(result.requests) / result.seconds)) | \(result.percentile(0.5)) | \(result.percentile(0.99)) |")
        var total = totals[name] ?? (0, 0, [])
        total.requests += result.requests
        total.seconds += result.seconds
        total.latencies += result.latenciesMicros
        totals[name] = total
    }
}
let text = totals["memcached text"]!
let wire = totals["wire (TandemClient)"]!
let textRate = Double(text.requests) / text.seconds
let wireRate = Double(wire.requests) / wire.seconds
let textResult = RunResult(requests: text.requests, seconds: text.seconds, latenciesMicros: text.latencies)
let wireResult = RunResult(requests: wire.requests, seconds: wire.seconds, latenciesMicros: wire.latencies)
print("")
print("| both rounds | req/s | p50 µs | p99 µs |")
print("|---|---|---|---|")
print("| memcached text | \(Int(textRate)) | \(textResult.percentile(0.5)) | \(textResult.percentile(0.99)) |")
print("| wire (TandemClient) | \(Int(wireRate)) | \(wireResult.percentile(0.5)) | \(wireResult.percentile(0.99)) |")
print("| wire / memcached | \(String(format: "%.2f", wireRate / textRate)) | \(String(format: "%.2f", Double(wireResult.percentile(0.5)) / Double(textResult.percentile(0.5)))) | \(String(format: "%.2f", Double(wireResult.percentile(0.99)) / Double(textResult.percentile(0.99)))) |")
for client in wireClients { try await (client as! TandemClient).close() }
for client in memcachedClients { try await (client as! MemcachedClient).channel.close().get() }
