import ArgumentParser
import Dispatch
import Foundation
import Logging
import TandemTLS

// `--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-ports`: which combinations
// make sense, loading the files at start (and on SIGHUP), and --check-config.

extension TLSPorts: ExpressibleByArgument {
    public init?(argument: String) {
        self.init(list: argument)
    }

    public var defaultValueDescription: String { description }
}

extension Tandemd {
    /// The ports that use TLS: `--tls-ports`, or both when only `--tls-cert` is given.
    var effectiveTLSPorts: TLSPorts {
        guard tlsCert != nil else { return [] }
        return tlsPorts ?? .all
    }

    /// The wire port requires client certificates signed by `--tls-ca`: only
    /// holders of a certificate of the pair's CA (the other node, an admin's
    /// tandemctl) get in, which guards it as `--secret-file` does.
    var wireIsMutualTLS: Bool {
        tlsCA != nil && effectiveTLSPorts.contains(.wire)
    }

    /// The flag combinations `validate()` refuses, before any file is read.
    func validateTLS() throws {
        switch (tlsCert, tlsKey) {
        case (.some, nil): throw ValidationError("--tls-cert needs --tls-key, the certificate's private key")
        case (nil, .some): throw ValidationError("--tls-key needs --tls-cert, the certificate the key belongs to")
        default: break
        }
        if tlsCert == nil {
            if tlsCA != nil {
                throw ValidationError("--tls-ca needs --tls-cert and --tls-key: with mutual TLS this node presents its own certificate to its peer")
            }
            if tlsPorts != nil { throw ValidationError("--tls-ports needs --tls-cert and --tls-key") }
            return
        }
        if tlsCA != nil, !effectiveTLSPorts.contains(.wire) {
            throw ValidationError("--tls-ca is for the wire port, which --tls-ports \(effectiveTLSPorts) leaves plaintext: add wire to --tls-ports, or leave out --tls-ca")
        }
        if effectiveTLSPorts.contains(.wire), tlsCA == nil, peer != nil {
            throw ValidationError("a TLS wire port with --peer needs --tls-ca, the CA that signed both nodes' certificates: the nodes check each other's certificate against it (mutual TLS)")
        }
    }

    /// Loads the files for the node; nil without `--tls-cert`.
    func loadTLS(logger: Logger) throws -> NodeTLS? {
        guard let tlsCert, let tlsKey else { return nil }
        let tls: NodeTLS
        do {
            tls = try NodeTLS(certificate: tlsCert, key: tlsKey, ca: tlsCA, ports: effectiveTLSPorts)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(2)
        }
        for warning in tls.warnings { logger.warning("\(warning)") }
        logger.info("TLS on the \(tls.ports) port\(tls.ports == .all ? "s" : "")", metadata: [
            "certificate": "\(tlsCert)",
            "client_certificates": "\(wireIsMutualTLS ? "required on the wire port (--tls-ca \(tlsCA ?? ""))" : "not asked for")",
        ])
        return tls
    }

    /// `--check-config`: the files load and fit together.
    func checkTLS(problems: inout [String], warnings: inout [String]) {
        guard let tlsCert, let tlsKey else { return }
        do {
            warnings += try NodeTLS(certificate: tlsCert, key: tlsKey, ca: tlsCA, ports: effectiveTLSPorts).warnings
        } catch {
            problems.append("\(error)")
        }
    }

    /// SIGHUP reads the certificate, key and CA files again (for a renewed
    /// certificate): new connections use them, open ones keep theirs. A bad
    /// file is logged and the ones in use stay. Without TLS there is nothing
    /// to reload, and SIGHUP no longer stops the node either.
    static func reloadOnHangup(_ tls: NodeTLS?, logger: Logger) -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler {
            guard let tls else {
                logger.info("SIGHUP: nothing to reload (no --tls-cert)")
                return
            }
            do {
                let warnings = try tls.reload()
                for warning in warnings { logger.warning("\(warning)") }
                logger.notice("SIGHUP: TLS certificate, key and CA reloaded; new connections use them", metadata: ["certificate": "\(tls.certificatePath)"])
            } catch {
                logger.error("SIGHUP: TLS files not reloaded, the previous ones stay in use: \(error)")
            }
        }
        source.resume()
        return source
    }
}
