/// The wire protocol versions this build speaks (Protocol.md 1.3). A
/// connection speaks the highest version in both sides' ranges.
///
/// - 1: the first version.
/// - 2: `importItems` is answered per item with `importReport` (0x0067)
///   instead of `importResult`'s totals, so a client learns which items were
///   rejected and why while the others are stored.
/// - 3: a `partialResync` may carry a replication ID other than the one the
///   backup asked with: the primary continues the history the backup
///   followed (it was promoted from it), and the backup adopts the new ID.
///   A version 2 backup would refuse that, so it is given a full resync.
/// - 4: `pairStatus` (0x0053) and `pairStatusReply` (0x0054): a node asks its
///   peer where it stands in typed fields instead of reading its status
///   properties. A node sends `pairStatus` only on a version 4 connection;
///   a peer that speaks at most version 3 is still read the old way.
/// - 5: the data messages (0x0090–0x0095): an application's get, set, add,
///   replace, cas, touch and delete, typed. A version 4 node answers them
///   `unknownMessage` and closes, so a client checks `helloOK.version`
///   before sending one.
public enum WireVersion {
    public static let minimum: UInt16 = 1
    public static let maximum: UInt16 = 5
    /// The first version whose `importItems` is answered with `importReport`.
    public static let perItemImport: UInt16 = 2
    /// The first version whose backups resume into a history continued
    /// across a promotion (`partialResync` with the primary's new ID).
    public static let continuedHistory: UInt16 = 3
    /// The first version with `pairStatus` and `pairStatusReply`.
    public static let pairStatus: UInt16 = 4
    /// The first version with the data messages (`get`, `store`, `touch`, `delete`).
    public static let dataMessages: UInt16 = 5
}
