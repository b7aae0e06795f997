@testable import Replication
import Testing

/// The backup's forwarded writes as a pure machine: which are sent, held,
/// sent again, and how the others fail (README, "Failover").
@Suite("Forwarded writes")
struct ForwardedWritesTests {
    /// A connection to the primary, told apart by its name.
    final class Link {
        let name: String
        init(_ name: String) { self.name = name }
    }

    typealias Machine = ForwardedWrites<String, Link>

    /// The writes an action list sends, with their request IDs and links.
    func sent(_ actions: [Machine.Action]) -> [(write: String, id: UInt32, link: String)] {
        actions.compactMap {
            guard case .send(let write, let id, let link) = $0 else { return nil }
            return (write, id, link.name)
        }
    }

    func failed(_ actions: [Machine.Action]) -> [(String, Machine.Ending)] {
        actions.compactMap {
            guard case .fail(let write, let ending) = $0 else { return nil }
            return (write, ending)
        }
    }

    func holds(_ actions: [Machine.Action]) -> [(write: String, hold: UInt64)] {
        actions.compactMap {
            guard case .hold(let write, let hold) = $0 else { return nil }
            return (write, hold)
        }
    }

    @Test("a write is sent on a usable link and answered once; a second reply finds nothing")
    func sentAndAnswered() {
        var machine = Machine(lastRequestID: 100)
        let link = Link("a")
        let sends = sent([machine.submit("set k", repeatable: true, acceptance: .following, link: link)])
        #expect(sends.map(\.write) == ["set k"] && sends.map(\.link) == ["a"])
        #expect(machine.replied(sends[0].id) == "set k")
        #expect(machine.replied(sends[0].id) == nil)
        #expect(machine.sent.isEmpty && machine.held.isEmpty)
    }

    @Test("request IDs wrap after the last one the machine may use")
    func requestIDsWrap() {
        var machine = Machine(lastRequestID: 3)
        let link = Link("a")
        let ids = (0..<5).flatMap { sent([machine.submit("w\($0)", repeatable: false, acceptance: .following, link: link)]).map(\.id) }
        #expect(ids == [1, 2, 3, 1, 2])
    }

    @Test("writes that arrive with the link down are held, then sent in order on the next link")
    func heldUntilTheLinkIsUp() {
        var machine = Machine(lastRequestID: 100)
        let first = holds([machine.submit("add a", repeatable: false, acceptance: .following, link: nil)])
        let second = holds([machine.submit("set b", repeatable: true, acceptance: .following, link: nil)])
        #expect(first.count == 1 && second.count == 1 && first[0].hold != second[0].hold)
        let resent = sent(machine.linkUp(Link("b")))
        #expect(resent.map(\.write) == ["add a", "set b"] && resent.allSatisfy { $0.link == "b" })
        // Their holds ended with the send: running out now does nothing.
        #expect(machine.holdRanOut(first[0].hold) == nil)
        #expect(machine.sent.count == 2 && machine.held.isEmpty)
    }

    @Test("a lost link holds the repeatable writes it was carrying (may have run) and fails the others")
    func linkLost() {
        var machine = Machine(lastRequestID: 100)
        let link = Link("a")
        _ = machine.submit("set a", repeatable: true, acceptance: .following, link: link)
        _ = machine.submit("incr n", repeatable: false, acceptance: .following, link: link)
        _ = machine.submit("touch t", repeatable: true, acceptance: .following, link: link)
        let actions = machine.linkLost(acceptance: .following)
        #expect(holds(actions).map(\.write) == ["set a", "touch t"])
        let failures = failed(actions)
        #expect(failures.count == 1 && failures[0].0 == "incr n" && failures[0].1 == .mayHaveRun)
        // A repeatable write held after it was sent fails as "may have run" if its hold runs out.
        let ranOut = machine.holdRanOut(holds(actions)[0].hold)
        #expect(ranOut?.0 == "set a" && ranOut?.1 == .mayHaveRun)
        #expect(sent(machine.linkUp(Link("b"))).map(\.write) == ["touch t"])
    }

    @Test("a node that stopped following fails even the repeatable writes the link carried, and refuses new ones")
    func refusing() {
        var machine = Machine(lastRequestID: 100)
        _ = machine.submit("set a", repeatable: true, acceptance: .following, link: Link("a"))
        let failures = failed(machine.linkLost(acceptance: .refusing))
        #expect(failures.count == 1 && failures[0].1 == .mayHaveRun)
        let refused = failed([machine.submit("set b", repeatable: true, acceptance: .refusing, link: nil)])
        #expect(refused.count == 1 && refused[0].1 == .notSent)
    }

    @Test("while a promotion is decided writes are held; ending them says which may have run")
    func holdingForAPromotion() {
        var machine = Machine(lastRequestID: 100)
        _ = machine.submit("set a", repeatable: true, acceptance: .following, link: Link("a"))
        #expect(holds(machine.linkLost(acceptance: .holding)).map(\.write) == ["set a"])
        // Even with a link at hand, a node being promoted holds.
        #expect(holds([machine.submit("set b", repeatable: true, acceptance: .holding, link: Link("b"))]).map(\.write) == ["set b"])
        let ended = machine.endHeld()
        #expect(ended.map(\.0) == ["set a", "set b"])
        #expect(ended.map(\.1) == [.mayHaveRun, .notSent])
        #expect(machine.held.isEmpty && machine.endHeld().isEmpty)
    }

    @Test("a write the closing link never carried goes on a new link at once, or is held as not run")
    func notWritten() {
        var machine = Machine(lastRequestID: 100)
        let old = Link("old")
        let first = sent([machine.submit("add a", repeatable: false, acceptance: .following, link: old)])[0]
        let second = sent([machine.submit("add b", repeatable: false, acceptance: .following, link: old)])[0]
        let onNew = machine.notWritten(first.id, acceptance: .following, newLink: Link("new"))
        #expect(onNew.map { sent([$0]).map(\.link) } == ["new"])
        let heldAgain = machine.notWritten(second.id, acceptance: .following, newLink: nil)
        let hold = heldAgain.map { holds([$0]) }?.first
        #expect(hold?.write == "add b")
        // Not run: if its hold runs out, it says so.
        let ranOut = machine.holdRanOut(hold!.hold)
        #expect(ranOut?.0 == "add b" && ranOut?.1 == .notSent)
        // A reply or a lost link got there first: nothing to do.
        #expect(machine.notWritten(first.id &+ 50, acceptance: .following, newLink: nil) == nil)
    }

    @Test("a write the closing link never carried fails as not run once the node refuses writes")
    func notWrittenWhileRefusing() {
        var machine = Machine(lastRequestID: 100)
        let write = sent([machine.submit("add a", repeatable: false, acceptance: .following, link: Link("a"))])[0]
        let failures = machine.notWritten(write.id, acceptance: .refusing, newLink: Link("b")).map { failed([$0]) }
        #expect(failures?.count == 1 && failures?.first?.1 == .notSent)
    }
}
