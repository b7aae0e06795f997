import Foundation
import TandemServer
import Testing

/// sd_notify over a real unix datagram socket, named by a path and by an abstract name.
@Suite("systemd notification")
struct SystemdNotifierTests {
    /// A bound datagram socket standing in for systemd's; returns its descriptor.
    func listen(at address: [UInt8]) throws -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(descriptor >= 0)
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { $0.copyBytes(from: address) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        let bound = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        try #require(bound == 0, "bind: \(String(cString: strerror(errno)))")
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return descriptor
    }

    func receive(_ descriptor: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        return count < 0 ? nil : String(decoding: buffer[..<count], as: UTF8.self)
    }

    @Test func toAPath() throws {
        let path = NSTemporaryDirectory() + "tandem-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let descriptor = try listen(at: Array(path.utf8) + [0])
        defer {
            close(descriptor)
            unlink(path)
        }
        try SystemdNotifier(address: path).notify("READY=1\nSTATUS=serving")
        #expect(receive(descriptor) == "READY=1\nSTATUS=serving")
    }

    @Test func toAnAbstractName() throws {
        let name = "tandem-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = try listen(at: [0] + Array(name.utf8))
        defer { close(descriptor) }
        try SystemdNotifier(address: "@" + name).notify("STOPPING=1")
        #expect(receive(descriptor) == "STOPPING=1")
    }

    @Test func refusals() {
        #expect(throws: SystemdNotifier.Failure.self) { try SystemdNotifier(address: "relative/path").notify("READY=1") }
        #expect(throws: SystemdNotifier.Failure.self) { try SystemdNotifier(address: "/" + String(repeating: "x", count: 200)).notify("READY=1") }
        // Nobody listening there.
        #expect(throws: SystemdNotifier.Failure.self) { try SystemdNotifier(address: "/nonexistent/notify.sock").notify("READY=1") }
    }
}
