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

    /// Stores items as they are on the primary (idempotent: an item already held exactly so is left alone).
    public func importItems(_ records: [SessionRecord]) async throws -> ImportSummary {
        let reply = try await handler.request(.importItems(records), on: channel, timeout: .seconds(60))
        guard case .importResult(let summary) = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to importItems") }
        return summary
    }
}
