import MemcacheProtocol
import NIOCore
import SessionStore

/// The memcached binary protocol, over the same store and counters as text.
extension Dispatcher {
    /// SASL for a connection: PLAIN against `--sasl-users`. Returns nil when
    /// `command` is not for SASL and may go on (already authenticated, or SASL is off).
    func authenticate(_ command: BinaryCommand, authenticated: inout Bool, into out: inout ByteBuffer) -> Disposition? {
        guard let users = context.configuration.saslUsers, case .request(let request) = command else { return nil }
        let code = request.opcode.rawValue
        switch request.opcode {
        case .saslListMechs:
            StaticString("PLAIN").withUTF8Buffer {
                out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque, value: UnsafeRawBufferPointer($0))
            }
        case .saslAuth, .saslStep:
            let mechanism = String(decoding: request.key.readableBytesView, as: UTF8.self)
            if request.opcode == .saslAuth, mechanism == "PLAIN", users.authenticatePlain(Array(request.value.readableBytesView)) {
                authenticated = true
                StaticString("Authenticated").withUTF8Buffer {
                    out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque, value: UnsafeRawBufferPointer($0))
                }
            } else {
                authenticated = false
                counters.increment(.authErrors)
                out.writeBinaryError(opcode: code, status: .authError, opaque: request.opaque)
            }
            counters.increment(.authCommands)
        default:
            guard !authenticated else { return nil }
            counters.increment(.authErrors)
            out.writeBinaryError(opcode: code, status: .authError, opaque: request.opaque)
        }
        return .proceed
    }

    func execute(_ command: BinaryCommand, into out: inout ByteBuffer) throws(ValueOnDisk) -> Disposition {
        switch command {
        case .refused(let opcode, let opaque, let status, let key):
            counters.increment(.protocolErrors)
            if status == .valueTooLarge {
                counters.increment(.storeTooLarge)
                // As for text: a set refused for its size removes the old value. Not on
                // a backup, whose items change only through the primary's stream.
                if opcode == BinaryOpcode.set.rawValue || opcode == BinaryOpcode.setQ.rawValue, key.readableBytes > 0,
                    context.replica == nil
                {
                    _ = try key.withReadableBytes { key throws(ValueOnDisk) in try store.delete(key) }
                }
            }
            out.writeBinaryError(opcode: opcode, status: status, opaque: opaque)
            return .proceed
        case .request(let request):
            return try execute(request, into: &out)
        }
    }

    private func execute(_ request: BinaryRequest, into out: inout ByteBuffer) throws(ValueOnDisk) -> Disposition {
        let opcode = request.opcode
        let code = opcode.rawValue
        let quiet = opcode.isQuiet
        switch opcode {
        case .get, .getQ, .getK, .getKQ, .gat, .gatQ, .gatK, .gatKQ:
            var options = FetchOptions()
            options.loaded = loadedValues.value(for: request.key)
            let touches = opcode.touches
            if touches {
                options.touch = deadline(Int64(request.extras.getInteger(at: request.extras.readerIndex, as: UInt32.self)!))
            }
            let found = try request.key.withReadableBytes { key throws(ValueOnDisk) in try store.fetch(key, options: options) }
            counters.increment(.cmdGet)
            if touches { counters.increment(.cmdTouch) }
            guard let result = found else {
                counters.increment(.getMisses)
                if touches { counters.increment(.touchMisses) }
                if !quiet { out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque) }
                return .proceed
            }
            counters.increment(.getHits)
            if touches { counters.increment(.touchHits) }
            let withKey = opcode.returnsKey
            var flags = result.item.flags.bigEndian
            withUnsafeBytes(of: &flags) { extras in
                result.item.withValueBytes { value in
                    out.writeBinaryResponse(
                        opcode: code, status: .noError, opaque: request.opaque, cas: result.item.cas,
                        extras: extras, key: withKey ? request.key : nil, value: value
                    )
                }
            }

        case .set, .setQ, .add, .addQ, .replace, .replaceQ, .append, .appendQ, .prepend, .prependQ:
            let mode: StoreMode
            switch opcode {
            case .add, .addQ: mode = .add
            case .replace, .replaceQ: mode = .replace
            case .append, .appendQ: mode = .append
            case .prepend, .prependQ: mode = .prepend
            default: mode = .set
            }
            var flags: UInt32 = 0
            var exptime: Int64 = 0
            if request.extras.readableBytes == 8 {
                flags = request.extras.getInteger(at: request.extras.readerIndex, as: UInt32.self)!
                exptime = Int64(request.extras.getInteger(at: request.extras.readerIndex + 4, as: UInt32.self)!)
            }
            let storeRequest = StoreRequest(
                mode: mode, flags: flags, deadline: deadline(exptime),
                compareCas: request.cas == 0 || mode == .add ? nil : request.cas
            )
            let outcome = try storeCounted(request.key, value: request.value, request: storeRequest)
            switch outcome {
            case .stored(let cas, _):
                if !quiet { out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque, cas: cas) }
            case .notStored:
                // add on a live key is "exists"; replace/append on a missing key is "not found"/"not stored".
                let status: BinaryStatus = mode == .add ? .keyExists : (mode == .replace ? .keyNotFound : .itemNotStored)
                out.writeBinaryError(opcode: code, status: status, opaque: request.opaque)
            case .exists:
                out.writeBinaryError(opcode: code, status: .keyExists, opaque: request.opaque)
            case .notFound:
                out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque)
            case .tooLarge:
                counters.increment(.storeTooLarge)
                out.writeBinaryError(opcode: code, status: .valueTooLarge, opaque: request.opaque)
            case .outOfMemory:
                counters.increment(.storeNoMemory)
                out.writeBinaryError(opcode: code, status: .outOfMemory, opaque: request.opaque)
            }

        case .delete, .deleteQ:
            let outcome = try request.key.withReadableBytes { key throws(ValueOnDisk) in
                try store.delete(key, request: DeleteRequest(compareCas: request.cas == 0 ? nil : request.cas))
            }
            switch outcome {
            case .deleted:
                counters.increment(.deleteHits)
                if !quiet { out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque) }
            case .notFound:
                counters.increment(.deleteMisses)
                out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque)
            case .exists:
                out.writeBinaryError(opcode: code, status: .keyExists, opaque: request.opaque)
            }

        case .increment, .incrementQ, .decrement, .decrementQ:
            let increment = opcode == .increment || opcode == .incrementQ
            let base = request.extras.readerIndex
            let delta = request.extras.getInteger(at: base, as: UInt64.self)!
            let initial = request.extras.getInteger(at: base + 8, as: UInt64.self)!
            let expiration = request.extras.getInteger(at: base + 16, as: UInt32.self)!
            // 0xffffffff: do not create a missing item.
            let vivify: (deadline: Deadline, initial: UInt64)? = expiration == UInt32.max ? nil : (deadline(Int64(expiration)), initial)
            let outcome = try request.key.withReadableBytes { key throws(ValueOnDisk) in
                try store.arithmetic(key, request: ArithmeticRequest(
                    increment: increment, delta: delta, compareCas: request.cas == 0 ? nil : request.cas, vivify: vivify
                ))
            }
            switch outcome {
            case .value(let number, let cas, _):
                counters.increment(increment ? .incrHits : .decrHits)
                if !quiet {
                    var value = number.bigEndian
                    withUnsafeBytes(of: &value) {
                        out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque, cas: cas, value: $0)
                    }
                }
            case .notFound:
                counters.increment(increment ? .incrMisses : .decrMisses)
                out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque)
            case .exists:
                out.writeBinaryError(opcode: code, status: .keyExists, opaque: request.opaque)
            case .nonNumeric:
                out.writeBinaryError(opcode: code, status: .nonNumericValue, opaque: request.opaque)
            case .outOfMemory:
                counters.increment(.storeNoMemory)
                out.writeBinaryError(opcode: code, status: .outOfMemory, opaque: request.opaque)
            }

        case .touch:
            let exptime = Int64(request.extras.getInteger(at: request.extras.readerIndex, as: UInt32.self)!)
            let found = try request.key.withReadableBytes { key throws(ValueOnDisk) in try store.touch(key, deadline: deadline(exptime)) }
            counters.increment(.cmdTouch)
            counters.increment(found ? .touchHits : .touchMisses)
            if found {
                out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque)
            } else {
                out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque)
            }

        case .flush, .flushQ:
            counters.increment(.cmdFlush)
            let delay = request.extras.readableBytes == 4
                ? Int64(request.extras.getInteger(at: request.extras.readerIndex, as: UInt32.self)!) : 0
            context.scheduleFlush(delay: delay, on: eventLoop)
            if !quiet { out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque) }

        case .noop:
            out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque)

        case .version:
            ServerContext.version.utf8CString.withUnsafeBytes { text in
                out.writeBinaryResponse(
                    opcode: code, status: .noError, opaque: request.opaque,
                    value: UnsafeRawBufferPointer(rebasing: text.dropLast())
                )
            }

        case .verbosity:
            out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque)

        case .quit:
            out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque)
            return .close
        case .quitQ:
            return .close

        case .stat:
            let group = String(decoding: request.key.readableBytesView, as: UTF8.self)
            let stats: [(String, String)]
            switch group {
            case "": stats = context.generalStats()
            case "settings": stats = settingsStats()
            default:
                out.writeBinaryError(opcode: code, status: .keyNotFound, opaque: request.opaque)
                return .proceed
            }
            for (name, value) in stats {
                let key = ByteBuffer(string: name)
                Array(value.utf8).withUnsafeBytes {
                    out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque, key: key, value: $0)
                }
            }
            out.writeBinaryResponse(opcode: code, status: .noError, opaque: request.opaque)

        case .saslListMechs, .saslAuth, .saslStep:
            // Handled by the connection, which holds the authentication state.
            out.writeBinaryError(opcode: code, status: .unknownCommand, opaque: request.opaque)
        }
        return .proceed
    }
}
