// pg_idem's module entry: _PG_init only registers things.
#include "claim.hpp"
#include "helper.hpp"
#include "own_claims.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "purge.hpp"
#include "stats.hpp"
#include "stock.hpp"

extern "C" {
#include "miscadmin.h"
#include "utils/guc.h"

IDEM_MODULE_MAGIC("pg_idem", "1.0");

void _PG_init(void)
{
    idem::pg::guarded([]() -> Datum {
        idem::pg::spi_init();
        idem::own_claims::init();
        idem::helper::init();
        idem::purge::define_gucs();
        idem::claims::define_settings();
        // Shared memory and background workers exist only when the library
        // is loaded at server start; claims need neither.
        if (process_shared_preload_libraries_in_progress) {
            idem::stats::init_preloaded();
            idem::stock::init_preloaded();
            idem::purge::init_preloaded();
        }
        MarkGUCPrefixReserved("pg_idem");
        return 0;
    });
}
}
