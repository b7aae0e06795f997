import NIOCore
import WireProtocol

extension TandemClient {
    /// One page of a scan; call again with the page's cursor until it is empty.
    public func scan(_ request: ScanRequest) async throws -> ScanPage {
        let reply = try await handler.request(.scan(request), on: channel, timeout: .seconds(30))
        guard case .scanPage(let page) = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to scan") }
        return page
    }

    /// One item with its value; throws `.server` with code `notFound` when absent.
    public func inspect(key: [UInt8]) async throws -> SessionRecord {
        let reply = try await handler.request(.inspect(key: key), on: channel, timeout: .seconds(10))
        guard case .scanPage(let page) = reply, let record = page.records.first else {
            throw TandemClientError.unexpectedReply("\(reply.type) to inspect")
        }
        return record
    }

    /// Deletes keys on the primary; returns how many were deleted and how many were not there.
    public func delete(keys: [[UInt8]]) async throws -> (deleted: UInt64, missing: UInt64) {
        let reply = try await handler.request(.deleteKeys(keys), on: channel, timeout: .seconds(30))
        guard case .deleteResult(let deleted, let missing) = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to deleteKeys") }
        return (deleted, missing)
    }

    /// Stores items as they are on the primary (idempotent: an item already
    /// held exactly so is left alone). Every item is handled on its own: the
    /// report says which were rejected and why; the others are stored.
    ///
    /// A node that speaks only version 1 of the protocol answers with totals,
    /// or with an error (thrown as `.server`) when it rejected any item.
    public func importItems(_ records: [SessionRecord]) async throws -> ImportReport {
        let reply = try await handler.request(.importItems(records), on: channel, timeout: .seconds(60))
        switch reply {
        case .importReport(let outcomes):
            guard outcomes.count == records.count else {
                throw TandemClientError.unexpectedReply("importReport with \(outcomes.count) outcomes for \(records.count) items")
            }
            return ImportReport(outcomes)
        case .importResult(let summary) where server.version < WireVersion.perItemImport:
            return ImportReport(summary: summary, rejected: [])
        default:
            throw TandemClientError.unexpectedReply("\(reply.type) to importItems")
        }
    }
}

/// What an import request did: the totals, and the items that were rejected.
public struct ImportReport: Sendable, Equatable {
    public var summary: ImportSummary
    /// The rejected items: their index in the request, and why.
    public var rejected: [Rejected]

    public struct Rejected: Sendable, Equatable {
        public var index: Int
        public var rejection: ImportRejection
    }

    public init(summary: ImportSummary, rejected: [Rejected]) {
        self.summary = summary
        self.rejected = rejected
    }

    /// Tallies a node's per-item answer.
    public init(_ outcomes: [ImportOutcome]) {
        var summary = ImportSummary(stored: 0, unchanged: 0, expired: 0)
        var rejected: [Rejected] = []
        for (index, outcome) in outcomes.enumerated() {
            switch outcome {
            case .stored: summary.stored += 1
            case .unchanged: summary.unchanged += 1
            case .expired: summary.expired += 1
            case .rejected(let rejection): rejected.append(Rejected(index: index, rejection: rejection))
            }
        }
        self.init(summary: summary, rejected: rejected)
    }
}
