#include <sqlite3.h>

// SQLITE_TRANSIENT is a macro over a cast Swift cannot import; a named constant it can.
static const sqlite3_destructor_type tandem_sqlite_transient = (sqlite3_destructor_type)-1;
static const sqlite3_destructor_type tandem_sqlite_static = (sqlite3_destructor_type)0;
