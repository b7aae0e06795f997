import Foundation
import NIOCore
import Testing
import WireProtocol

/// The example frames of Protocol.md section 1.6, byte for byte.
@Suite("Protocol.md examples")
struct DocumentedExampleTests {
    static let pingHex = "00 00 00 10 00 10 00 00 00 00 00 07 00 00 01 a2 01 a0 1c 80"
    static let changesHex = """
        00 00 00 34 00 25 00 00 00 00 00 00 00 00 00 01 \
        00 00 00 00 00 00 00 2a 01 00 00 00 01 6b 00 00 00 02 68 69 \
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 07
        """

    static let importReportHex = """
        00 00 00 1a 00 67 00 01 00 00 00 03 00 00 00 02 01 04 01 \
        00 00 00 07 62 61 64 20 6b 65 79
        """

    static let pairStatusReplyHex = """
        00 00 00 47 00 54 00 01 00 00 00 05 01 02 00 00 00 00 00 00 00 03 \
        10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 00 00 00 00 00 00 04 b0 \
        20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 00 00 00 00 00 00 03 e8 \
        00 00 00 01 62
        """

    static let storeHex = """
        00 00 00 28 00 92 00 00 00 00 00 09 02 00 00 00 01 6b 00 00 00 02 68 69 \
        00 00 00 00 00 00 00 00 00 00 ea 60 00 00 00 00 00 00 00 00
        """

    static let itemsHex = """
        00 00 00 2b 00 91 00 01 00 00 00 0a 00 00 00 01 00 00 00 01 6b 00 00 00 02 68 69 \
        00 00 00 00 00 00 01 a2 01 a1 06 e0 66 0d 65 97 13 64 00 01
        """

    static let store = WireMessage.store(DataWrite(mode: .add, key: bb("k"), value: bb("hi"), flags: 0, ttlMillis: 60_000))
    static let items = WireMessage.items([
        DataItem(key: bb("k"), value: bb("hi"), flags: 0, deadlineMillis: 1_795_323_660_000, stamp: 7_353_645_466_105_675_777),
    ])

    static let ping = WireMessage.ping(timestampMillis: 1_795_323_600_000)
    static let pairStatusReply = WireMessage.pairStatusReply(PairStatus(
        nodeName: "b", role: .primary, configuredRole: .backup, epoch: 3, replicationID: ReplicationID(bytes: Array(0x10...0x1F)), offset: 1200,
        previousReplicationID: ReplicationID(bytes: Array(0x20...0x2F)), forkOffset: 1000
    ))
    static let importReport = WireMessage.importReport([.stored, .rejected(ImportRejection(.invalidKey, "bad key"))])
    static let changes = WireMessage.changes([
        ReplicatedChange(offset: 42, kind: .upsert, key: bb("k"), value: bb("hi"), flags: 0, deadlineMillis: 0, stamp: 7),
    ])

    /// The hex dumps of the code blocks of section 1.6: on every line, the hex byte
    /// pairs before the first run of two spaces (the rest of the line describes them).
    static func documentedFrames() throws -> [String] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Protocol.md"), encoding: .utf8)
        let start = try #require(text.range(of: "### 1.6 "))
        let rest = text[start.upperBound...]
        let section = rest[..<(rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex)]
        var frames: [String] = []
        var current: [String]?
        for line in section.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") {
                if let block = current {
                    frames.append(block.joined(separator: " "))
                    current = nil
                } else {
                    current = []
                }
            } else if current != nil {
                let bytes = line.components(separatedBy: "  ")[0].trimmingCharacters(in: .whitespaces)
                if !bytes.isEmpty { current!.append(bytes) }
            }
        }
        return frames
    }

    @Test("the ping with request id 7 encodes to the documented bytes")
    func pingBytes() throws {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(Self.ping, requestID: 7)
        #expect(hex(buffer) == Self.pingHex)
        #expect(hex(frameBytes(type: 0x0010, requestID: 7, body: encodedBody(Self.ping))) == Self.pingHex)

        var decoder = WireFrameDecoder()
        var wire = bb(bytes(hex: Self.pingHex))
        let frame = try #require(try decoder.decode(buffer: &wire))
        #expect(frame.requestID == 7 && frame.flags == 0 && frame.messageType == .ping)
        #expect(try frame.message() == Self.ping)
    }

    @Test("the changes frame with one upsert encodes to the documented bytes")
    func changesBytes() throws {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(Self.changes)
        #expect(hex(buffer) == Self.changesHex)

        var decoder = WireFrameDecoder()
        var wire = bb(bytes(hex: Self.changesHex))
        let frame = try #require(try decoder.decode(buffer: &wire))
        #expect(try frame.message() == Self.changes)
    }

    /// `message` answering request `requestID` encodes to `documented`, which decodes back to it.
    func expectAnswer(_ message: WireMessage, requestID: UInt32, encodesTo documented: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(message, flags: WireFrame.Flags.response, requestID: requestID)
        #expect(hex(buffer) == documented, sourceLocation: sourceLocation)

        var decoder = WireFrameDecoder()
        var wire = bb(bytes(hex: documented))
        let frame = try #require(try decoder.decode(buffer: &wire), sourceLocation: sourceLocation)
        #expect(frame.requestID == requestID && frame.isResponse && frame.messageType == message.type, sourceLocation: sourceLocation)
        #expect(try frame.message() == message, sourceLocation: sourceLocation)
    }

    @Test("the importReport answering request 3 encodes to the documented bytes")
    func importReportBytes() throws {
        try expectAnswer(Self.importReport, requestID: 3, encodesTo: Self.importReportHex)
    }

    @Test("the pairStatusReply answering request 5 encodes to the documented bytes")
    func pairStatusReplyBytes() throws {
        try expectAnswer(Self.pairStatusReply, requestID: 5, encodesTo: Self.pairStatusReplyHex)
    }

    @Test("the store request with id 9 encodes to the documented bytes")
    func storeBytes() throws {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(Self.store, requestID: 9)
        #expect(hex(buffer) == Self.storeHex)
        var decoder = WireFrameDecoder()
        var wire = bb(bytes(hex: Self.storeHex))
        let frame = try #require(try decoder.decode(buffer: &wire))
        #expect(frame.requestID == 9 && !frame.isResponse && frame.messageType == .store)
        #expect(try frame.message() == Self.store)
    }

    @Test("the items answering request 10 encode to the documented bytes")
    func itemsBytes() throws {
        try expectAnswer(Self.items, requestID: 10, encodesTo: Self.itemsHex)
    }

    @Test("Protocol.md section 1.6 shows exactly these bytes")
    func documentMatches() throws {
        let frames = try Self.documentedFrames()
        #expect(frames == [Self.pingHex, Self.changesHex, Self.importReportHex, Self.pairStatusReplyHex, Self.storeHex, Self.itemsHex])
    }

    /// The rows of the message table of section 1.4: type number and name.
    static func documentedMessageTypes() throws -> [(UInt16, String)] {
        let text = try protocolText()
        let start = try #require(text.range(of: "### 1.4 Messages"))
        let rest = text[start.upperBound...]
        let section = rest[..<(rest.range(of: "\n### ")?.lowerBound ?? rest.endIndex)]
        return section.split(separator: "\n").compactMap { line -> (UInt16, String)? in
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2, cells[0].hasPrefix("0x"), let type = UInt16(cells[0].dropFirst(2), radix: 16) else { return nil }
            return (type, cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`")))
        }
    }

    static func protocolText() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("Protocol.md"), encoding: .utf8)
    }

    @Test("Protocol.md's message table lists exactly the types this build knows")
    func messageTableMatches() throws {
        let documented = try Self.documentedMessageTypes()
        #expect(documented.map(\.0) == WireMessageType.allCases.map(\.rawValue))
        #expect(documented.map(\.1) == WireMessageType.allCases.map(\.name))
    }

    @Test("Protocol.md names the versions this build speaks")
    func versionsMatch() throws {
        let text = try Self.protocolText()
        #expect(text.contains("This document is version **\(WireVersion.maximum)**"))
        #expect(WireVersion.minimum == 1 && WireVersion.perItemImport == 2 && WireVersion.pairStatus == 4 && WireVersion.dataMessages == 5)
    }
}
