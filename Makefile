# pg_idem: a PGXS build of a C++17 extension.
EXTENSION  = pg_idem
# The version lives in one place, the control file's default_version.
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = pg_idem

# One object per capability file; src/core never includes postgres.h (see core-check).
SRCS = $(sort $(wildcard src/*.cpp src/pg/*.cpp src/core/*.cpp))
OBJS = $(SRCS:.cpp=.o)

# The install script is assembled from one SQL file per capability
# (src/install/NAME.sql), after the header in extension.sql.
INSTALL_SQL = src/install/extension.sql $(filter-out src/install/extension.sql,$(sort $(wildcard src/install/*.sql)))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
# Every upgrade script (pg_idem--OLD--NEW.sql) and every frozen release's
# install script, by wildcard (CONTRIBUTING.md "Releasing").
DATA        = $(filter-out $(DATA_built),$(wildcard $(EXTENSION)--*.sql))

# Every test file is picked up by wildcard: no test can be orphaned.
# `make test-one T=NAME` runs one of them (sql/NAME.sql or specs/NAME.spec)
# on a throwaway server (scripts/in-server).
REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --outputdir=.
ISOLATION    = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --inputdir=. --outputdir=output_iso

# C++ inside the backend: C++17, PostgreSQL's headers need -Wno-register,
# and gcc links, so the C++ runtime is named explicitly.
# WERROR=1 (CI) turns every warning into an error.
PG_CXXFLAGS = -std=c++17 -Wall -Wextra -Wno-register -Wno-missing-field-initializers \
              -Wno-unused-parameter $(if $(WERROR),-Werror)
PG_CPPFLAGS = -I$(srcdir)/src -MMD -MP
SHLIB_LINK  = -lstdc++
EXTRA_CLEAN = $(SRCS:.cpp=.d) results output_iso regression.diffs regression.out $(STRESS) $(PROTOCOL) $(UNIT)

# Debian's server is built with LLVM, and the bitcode rule would compile our
# sources with clang without PG_CXXFLAGS. pg_idem's functions spend their time
# in SPI, not in expressions JIT could inline, so we build no bitcode at all.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)

# Supported: PostgreSQL 15, 17 and 18, each tested in CI; 16 builds (all its
# differences are in src/pg/compat.hpp) but no CI runs it.
PG_MAJOR := $(shell $(PG_CONFIG) --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
ifeq ($(filter 15 16 17 18,$(PG_MAJOR)),)
$(error pg_idem supports PostgreSQL 15, 17 and 18 (16 untested), but $(PG_CONFIG) is "$(shell $(PG_CONFIG) --version)": set PG_CONFIG to another server's pg_config)
endif
ifeq ($(PG_MAJOR),16)
$(warning pg_idem: PostgreSQL 16 builds but is untested (no CI runs it))
endif

include $(PGXS)

# The regression and isolation tests claim one statement at a time, to show
# each step, in autocommit: pg_idem refuses that by default, and
# sql/claim_autocommit.sql tests the default.
installcheck: export PGOPTIONS += -c pg_idem.allow_autocommit=on

$(DATA_built): $(INSTALL_SQL) Makefile
	cat $(INSTALL_SQL) > $@

# Header dependencies, so editing a header rebuilds what uses it.
-include $(SRCS:.cpp=.d)

# The libpqxx stress client (test/stress): a program of its own, not part of
# the extension; `make stress` builds it.
STRESS = test/stress/idem_stress test/stress/idem_pay test/stress/idem_provider
.PHONY: stress
stress: $(STRESS)
# It builds with bookworm's libpqxx 6.4 and trixie's 7.10, which deprecates
# calls (exec1, exec_params) whose replacements 6.4 lacks: those warnings
# stay warnings.
test/stress/%: test/stress/%.cpp
	$(CXX) -std=c++17 -O2 -Wall -Wextra $(if $(WERROR),-Werror -Wno-error=deprecated-declarations) -o $@ $< -lpqxx -lpq -pthread

# The wire-protocol test of pg_idem.allow_autocommit (test/protocol): a libpq
# client, so that each protocol is exactly what a driver sends.
PROTOCOL = test/protocol/autocommit
.PHONY: protocol
protocol: $(PROTOCOL)
$(PROTOCOL): test/protocol/autocommit.cpp
	$(CXX) -std=c++17 -O2 -Wall -Wextra $(if $(WERROR),-Werror) -I$(shell $(PG_CONFIG) --includedir) -o $@ $< -lpq

# Unit tests of the plain C++ in src/core, which needs no server: `make unit`
# builds and runs them. Each test/unit/NAME_test.cpp tests src/core/NAME.cpp.
UNIT = $(patsubst %.cpp,%,$(sort $(wildcard test/unit/*_test.cpp)))
.PHONY: unit
unit: $(UNIT)
	@for t in $(UNIT); do ./$$t || exit 1; done
test/unit/%_test: test/unit/%_test.cpp src/core/%.cpp $(wildcard src/core/*.hpp)
	$(CXX) -std=c++17 -O2 -Wall -Wextra $(if $(WERROR),-Werror) -I$(srcdir)/src -o $@ $< src/core/$*.cpp $(filter-out src/core/$*.cpp,$(wildcard src/core/*.cpp))

# The split between plain C++ and PostgreSQL code is checked at build time:
# every file of src/core must compile with src/ alone on the include path,
# so none can include a PostgreSQL header, directly or through src/pg.
.PHONY: core-check
core-check:
	@for f in $(wildcard src/core/*.cpp); do \
	  $(CXX) -std=c++17 -fsyntax-only -I$(srcdir)/src $$f \
	  || { echo "src/core must be plain C++: $$f does not compile without PostgreSQL's headers"; exit 1; }; \
	done
all: core-check

# The C++ layout is .clang-format's (clang-format 14, Debian 12's): `make
# format` applies it, `make format-check` (scripts/test) fails on a file that
# differs. Another clang-format version lays some lines out differently.
CLANG_FORMAT ?= clang-format-14
FORMAT_FILES = $(sort $(wildcard src/*.[ch]pp src/*/*.[ch]pp test/*/*.cpp examples/cpp/*.[ch]pp))
.PHONY: format format-check
format:
	$(CLANG_FORMAT) -i $(FORMAT_FILES)
format-check:
	@$(CLANG_FORMAT) --dry-run --Werror $(FORMAT_FILES) || { echo "the C++ above differs from .clang-format: run make format"; exit 1; }

.PHONY: test-one
test-one:
	@test -n "$(T)" || { echo "usage: make test-one T=NAME (sql/NAME.sql or specs/NAME.spec)"; exit 2; }
	scripts/in-server $(MAKE) -s installcheck \
	  REGRESS="$(filter $(T),$(REGRESS))" ISOLATION="$(filter $(T),$(ISOLATION))"

# For editors and clang-tidy: the compiler's view of every source file
# (Debian's bear records it).
compile_commands.json: $(SRCS) Makefile
	$(MAKE) -s clean
	bear --output $@ -- $(MAKE) -s
