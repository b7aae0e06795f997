#include <sqlite3.h>

// SQLITE_TRANSIENT is a macro over a cast Swift cannot import; a named constant it can.
static const sqlite3_destructor_type tandem_sqlite_transient = (sqlite3_destructor_type)-1;
static const sqlite3_destructor_type tandem_sqlite_static = (sqlite3_destructor_type)0;

// sqlite3_db_config is variadic, which Swift cannot call. Closing a connection
// must never checkpoint on its own: a file refused at start stays byte for
// byte as it was; a clean stop checkpoints explicitly.
static inline int tandem_sqlite_disable_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}

// The WAL hook runs after every commit with the number of frames in the WAL;
// recording it lets the writer hand checkpoints to another thread. Installing
// a hook also turns off SQLite's own autocheckpoint, which would otherwise
// run the checkpoint (and its fdatasync) inside the committing thread.
static inline int tandem_sqlite_record_wal_frames(void *frames, sqlite3 *db, const char *name, int count) {
    (void)db; (void)name;
    *(int *)frames = count;
    return SQLITE_OK;
}

static inline void tandem_sqlite_track_wal_frames(sqlite3 *db, int *frames) {
    sqlite3_wal_hook(db, tandem_sqlite_record_wal_frames, frames);
}
