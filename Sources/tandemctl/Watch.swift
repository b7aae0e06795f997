import ArgumentParser
import Dispatch
import Foundation
import Synchronization
import TandemClient
import WireProtocol

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the node's changes and expirations as they happen, one line each.",
        discussion: """
            Streams every write (set), client delete, expiry, eviction and flush_all \
            the node makes from now on, to keys that start with --prefix (flush_all \
            is always shown), until interrupted (Ctrl-C: exit 0) or --count events:

              2026-11-22T05:00:00.123Z  set     sess:1  2048 B  ttl 1800s
              2026-11-22T05:00:01.456Z  delete  sess:1
              2026-11-22T05:30:00.250Z  expire  sess:2
              2026-11-22T05:30:00.250Z  evict   sess:3
              2026-11-22T05:31:00.000Z  flush_all
              2026-11-22T05:31:00.010Z  … 1200 events dropped (the watcher fell behind)

            Times are the node's, when it released the change. An expired item shows \
            when the node reclaims it: when it is next read, or by the background sweep \
            within about 250 ms of its deadline. An eviction (memory full) is a removal \
            before the deadline. On a backup the stream is the primary's changes as the \
            backup applies them. A watcher that cannot keep up loses events, never slows \
            the node: the gap is one "dropped" line with the count.

            --json prints one object per line: time, event (set, delete, expire, evict, \
            flush_all, dropped), key (UTF-8, invalid bytes as \\xNN; key_base64 too when \
            the key is not UTF-8), size (bytes of the value; for dropped the count), \
            deadline (null: never expires).

            Examples:
              tandemctl watch --prefix sess:
              tandemctl watch --port 11312 --json | jq -c 'select(.event == "expire")'
              tandemctl watch --prefix sess:4f2a --count 1   # the next change of a session
            """
    )

    @OptionGroup var node: NodeOptions

    @Option(help: ArgumentHelp("Only keys that start with this (default: every key).", valueName: "prefix"))
    var prefix: String = ""

    @Option(help: ArgumentHelp("Exit (0) after this many events.", valueName: "n"))
    var count: Int?

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
    }

    func run() async throws {
        // Ctrl-C ends the watch like --count does: the loop ends, the connection
        // closes, exit 0. Caught from the start, so that none is lost before the watch runs.
        signal(SIGINT, SIG_IGN)
        let interrupt = Interrupt()
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler { interrupt.fire() }
        source.resume()
        defer { source.cancel() }
        try await reporting {
            let client = try await node.connect()
            let json = node.json
            let limit = count
            let prefix = Array(self.prefix.utf8)
            let watching = Task {
                var printed = 0
                for try await event in client.watch(prefix: prefix) {
                    guard Self.write(Self.line(for: event, json: json)) else { break }
                    printed += 1
                    if let limit, printed >= limit { break }
                }
            }
            interrupt.cancels(watching)
            do {
                try await watching.value
            } catch let error as TandemClientError {
                try? await client.close()
                throw Failure(error)
            }
            try? await client.close()
        }
    }

    /// Writes one line to stdout at once (not buffered: a pipe sees each event
    /// as it happens). `false` when stdout is gone: nobody is reading any more.
    static func write(_ line: String) -> Bool {
        do {
            try FileHandle.standardOutput.write(contentsOf: Data((line + "\n").utf8))
            return true
        } catch {
            return false
        }
    }

    static func line(for event: WatchEvent, json: Bool) -> String {
        json ? jsonLine(for: event) : textLine(for: event)
    }

    /// The event's name, as both formats show it.
    static func name(of event: WatchEvent) -> String {
        switch event.kind {
        case .upsert: return "set"
        case .delete: return "delete"
        // A removal before the deadline (or of an item that never expires) is the memory limit's doing.
        case .remove: return event.deadlineMillis != 0 && event.deadlineMillis <= event.timeMillis ? "expire" : "evict"
        case .flushAll: return "flush_all"
        case .dropped: return "dropped"
        }
    }

    static func textLine(for event: WatchEvent) -> String {
        let time = timestamp(event.timeMillis)
        let key = displayKey(event.key, escapingControls: true).text
        let name = name(of: event)
        let padded = name.padding(toLength: 6, withPad: " ", startingAt: 0)
        switch event.kind {
        case .upsert:
            return "\(time)  \(padded)  \(key)  \(event.size) B  ttl \(ttl(event))"
        case .delete, .remove:
            return "\(time)  \(padded)  \(key)"
        case .flushAll:
            return "\(time)  \(name)"
        case .dropped:
            return "\(time)  … \(event.size) events dropped (the watcher fell behind)"
        }
    }

    static func jsonLine(for event: WatchEvent) -> String {
        let key = displayKey(event.key, escapingControls: false)
        var object: [String: Any] = [
            "time": timestamp(event.timeMillis),
            "event": name(of: event),
            "key": key.text,
            "size": Int(event.size),
            "deadline": event.deadlineMillis == 0 ? NSNull() : timestamp(event.deadlineMillis) as Any,
        ]
        if !key.isUTF8 { object["key_base64"] = Data(event.key).base64EncodedString() }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            // Only strings, numbers and null go in: serialising cannot fail.
            return "{}"
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Seconds left at the event, rounded up as memcached reports a TTL.
    static func ttl(_ event: WatchEvent) -> String {
        guard event.deadlineMillis != 0 else { return "never" }
        let left = event.deadlineMillis - event.timeMillis
        return left <= 0 ? "0s" : "\((left + 999) / 1000)s"
    }

    static func timestamp(_ millis: Int64) -> String {
        Date(timeIntervalSince1970: Double(millis) / 1000).formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// A key as text: its UTF-8, with every byte that is not part of valid
    /// UTF-8 as `\xNN` (and, for the table, control characters too, so one
    /// event stays one line).
    static func displayKey(_ key: [UInt8], escapingControls: Bool) -> (text: String, isUTF8: Bool) {
        var text = ""
        var isUTF8 = true
        var parser = Unicode.UTF8.ForwardParser()
        var bytes = key.makeIterator()
        var position = 0
        func escape(_ byte: UInt8) {
            text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
        while true {
            switch parser.parseScalar(from: &bytes) {
            case .valid(let encoded):
                let scalar = Unicode.UTF8.decode(encoded)
                if escapingControls, scalar.value < 0x20 || scalar.value == 0x7F {
                    escape(UInt8(scalar.value))
                } else {
                    text.unicodeScalars.append(scalar)
                }
                position += encoded.count
            case .error(let length):
                isUTF8 = false
                for byte in key[position..<min(key.count, position + length)] { escape(byte) }
                position += length
            case .emptyInput:
                return (text, isUTF8)
            }
        }
    }
}

/// Cancels the watch on SIGINT, also when the signal comes before the watch started.
final class Interrupt: Sendable {
    private struct State {
        var interrupted = false
        var task: Task<Void, any Error>?
    }

    private let state = Mutex(State())

    func fire() {
        let task = state.withLock { state in
            state.interrupted = true
            return state.task
        }
        task?.cancel()
    }

    func cancels(_ task: Task<Void, any Error>) {
        let interrupted = state.withLock { state in
            state.task = task
            return state.interrupted
        }
        if interrupted { task.cancel() }
    }
}
