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
