// pg_idem's module entry: _PG_init only registers things.
#include "pg/guard.hpp"
#include "pg/spi.hpp"

extern "C" {
PG_MODULE_MAGIC;

void _PG_init(void)
{
    idem::pg::guarded([]() -> Datum {
        idem::pg::spi_init();
        return 0;
    });
}
}
