/// The writes a backup forwards to its primary, as a pure machine: no I/O,
/// no clocks, no locks. `ReplicaClient` is its shell: it feeds the events
/// (a client's write, the link up or lost, a reply, a frame the link never
/// carried, a hold or a wait that ran out, a stop) and performs what each
/// returns (send a write, answer it, fail it).
///
/// A write is, in turn:
/// - **sent**: written to the link under a request ID, waiting for the
///   primary's reply;
/// - **held**: waiting for a usable link or this node's promotion (at most
///   a hold's time, which the shell times): one that arrived while the link
///   was down, one the closing link never carried, or a repeatable one (a
///   `set`, a `touch`) whose reply the link's loss took;
/// - and it ends **answered** (the reply came), **failed** (with why, which
///   says whether it may have run on the primary) or **run here** (this
///   node was promoted: `endHeld`, which `ReplicaClient.failParked(.roleChanged)`
///   answers so that the connection runs the write itself).
///
/// `Write` is what the shell keeps per write (the request and the promise
/// its answer completes); `Link` is a connection to the primary.
struct ForwardedWrites<Write, Link> {
    /// Whether this node forwards, holds or refuses new writes.
    enum Acceptance {
        /// Following a primary: writes are sent, or held while the link is down.
        case following
        /// Stopped for a promotion not yet decided: writes are held.
        case holding
        /// Stopped: new writes are refused, and nothing is held any more.
        case refusing
    }

    /// How a write that got no reply ends.
    enum Ending: Equatable {
        /// It never reached the primary: it did not run.
        case notSent
        /// It was sent and not answered: it may have run there.
        case mayHaveRun
    }

    /// What the shell does with one write.
    enum Action {
        /// Writes it to `link` under `requestID`.
        case send(Write, requestID: UInt32, on: Link)
        /// Keeps it until a link or a promotion; the shell times the hold
        /// and reports `holdRanOut(hold)` when it passes.
        case hold(Write, hold: UInt64)
        /// Answers it with the failure.
        case fail(Write, Ending)
    }

    struct Held {
        var write: Write
        var hold: UInt64
        var repeatable: Bool
        /// Sent once already, with no answer: it may have run on the primary.
        var mayHaveRun: Bool

        var ending: Ending { mayHaveRun ? .mayHaveRun : .notSent }
    }

    struct Sent {
        var write: Write
        var repeatable: Bool
    }

    /// Request IDs run from 1 up to this, then wrap (the IDs above are the
    /// link's own requests).
    let lastRequestID: UInt32
    private(set) var sent: [UInt32: Sent] = [:]
    /// Oldest first: they are sent again in the order they came.
    private(set) var held: [Held] = []
    private var nextRequestID: UInt32 = 1
    private var nextHold: UInt64 = 1

    init(lastRequestID: UInt32) {
        self.lastRequestID = lastRequestID
    }

    /// A client's write. `link`: the connection to the primary when it is
    /// usable (handshake done), else nil.
    mutating func submit(_ write: Write, repeatable: Bool, acceptance: Acceptance, link: Link?) -> Action {
        switch acceptance {
        case .refusing:
            return .fail(write, .notSent)
        case .following:
            if let link { return send(write, repeatable: repeatable, on: link) }
            return hold(write, repeatable: repeatable, mayHaveRun: false)
        case .holding:
            // The link is down or this node is being promoted: the primary
            // may be back in a moment, or this node promoted; either way the
            // write need not fail yet.
            return hold(write, repeatable: repeatable, mayHaveRun: false)
        }
    }

    /// The primary's reply (or its refusal) to `requestID`, or the shell's
    /// wait for it ran out: the write to answer, if still sent.
    mutating func replied(_ requestID: UInt32) -> Write? {
        sent.removeValue(forKey: requestID)?.write
    }

    /// The frame of `requestID` was never written to its link (it closed
    /// first): not run, so it goes at once on `newLink` (a usable link other
    /// than that one), or is held.
    mutating func notWritten(_ requestID: UInt32, acceptance: Acceptance, newLink: Link?) -> Action? {
        guard let forward = sent.removeValue(forKey: requestID) else { return nil }
        switch acceptance {
        case .refusing:
            return .fail(forward.write, .notSent)
        case .following:
            if let newLink { return send(forward.write, repeatable: forward.repeatable, on: newLink) }
            return hold(forward.write, repeatable: forward.repeatable, mayHaveRun: false)
        case .holding:
            return hold(forward.write, repeatable: forward.repeatable, mayHaveRun: false)
        }
    }

    /// The link is gone (or this node stopped following) with writes sent
    /// and not answered: whether they ran on the primary is unknown. One
    /// that may run twice (`repeatable`: the second run leaves what the
    /// first did) is held again, unless this node refuses writes now; the
    /// others fail. In the order they were sent.
    mutating func linkLost(acceptance: Acceptance) -> [Action] {
        let lost = sent.sorted { $0.key < $1.key }.map(\.value)
        sent = [:]
        return lost.map { forward in
            guard forward.repeatable, acceptance != .refusing else { return .fail(forward.write, .mayHaveRun) }
            return hold(forward.write, repeatable: true, mayHaveRun: true)
        }
    }

    /// A usable link to the primary: every held write goes on it, oldest first.
    mutating func linkUp(_ link: Link) -> [Action] {
        let waiting = held
        held = []
        return waiting.map { send($0.write, repeatable: $0.repeatable, on: link) }
    }

    /// The hold numbered `hold` ran out: its write fails (if still held).
    mutating func holdRanOut(_ hold: UInt64) -> (Write, Ending)? {
        guard let index = held.firstIndex(where: { $0.hold == hold }) else { return nil }
        let expired = held.remove(at: index)
        return (expired.write, expired.ending)
    }

    /// Ends every held write, each with how it would end unsent (the shell
    /// may give its own reason instead: a promotion runs them here).
    /// Nothing is held after this.
    mutating func endHeld() -> [(Write, Ending)] {
        let ending = held.map { ($0.write, $0.ending) }
        held = []
        return ending
    }

    private mutating func send(_ write: Write, repeatable: Bool, on link: Link) -> Action {
        let requestID = nextRequestID
        nextRequestID = nextRequestID >= lastRequestID ? 1 : nextRequestID + 1
        sent[requestID] = Sent(write: write, repeatable: repeatable)
        return .send(write, requestID: requestID, on: link)
    }

    private mutating func hold(_ write: Write, repeatable: Bool, mayHaveRun: Bool) -> Action {
        let hold = nextHold
        nextHold += 1
        held.append(Held(write: write, hold: hold, repeatable: repeatable, mayHaveRun: mayHaveRun))
        return .hold(write, hold: hold)
    }
}
