"""A production-like benchmark database: users, orders, events (JSONB), documents (TOASTed text).

pgbench's blank-padded rows compress ~36x and make ``pg_dump``'s gzip nearly free; an
application's data compresses 3-6x. This generator builds, entirely server-side
(``generate_series`` and ``hashtext``-derived values, so it needs no client round trip
per row), the shapes such a database has:

- ``users``      uuid, email, a password hash, first and last name, country, status, balance (numeric),
                 created_at, a short bio; unique email, btree (country, created_at)
- ``orders``     user_id (foreign key), created_at, status, currency, amount (numeric),
                 item count, a payment reference, an optional note; btree (user_id, created_at), a partial index
                 on the pending ones
- ``events``     user_id, occurred_at, kind, a JSONB payload whose keys depend on the kind,
                 a text[] of tags; btree (user_id, occurred_at), GIN on the payload
- ``documents``  title and a 2-12 KiB body of words (TOASTed); btree (user_id, updated_at)

Every value is a function of the row number and ``--seed`` (``hashtext`` of both), so the
same seed and scale give the same database. Words come from a built-in list of ~580,
picked by a power law (rank = n * u^2): frequent words are very frequent, as in real text.

``--scale`` is the size on disk in GB (0.1 to 10); the database is named
``opskit_bench_prod_<scale>_<seed>`` and reused while its comment matches the parameters.

Usage: ``python bench/dataset.py [--scale 0.5] [--seed 1] [--rebuild]`` prints the size on
disk, ``pg_dump -Fc`` size and plain size, and the compression ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import psycopg

GENERATOR_VERSION = 1

# Rows per GB (10^9 bytes) on disk, tables and indexes, measured with this generator at 0.05 and 0.5.
ROWS_PER_GB = {"users": 220_000, "orders": 1_320_000, "events": 880_000, "documents": 29_000}

# ~580 words: common English first (the power law picks them most), then domain words.
WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when if so no will more can out up who them
some could what into time only other new about these then two may first any like now my such over also
its most our very after should well back where just through much before good see way many those even
order account user payment invoice shipping delivery customer product price discount refund status
pending paid shipped cancelled returned review rating cart checkout session login logout signup email
address city country region postal phone mobile device browser android ios windows linux mac chrome
firefox safari edge search click view page home settings profile password reset token verify confirm
subscription plan monthly yearly trial upgrade downgrade renew expire coupon promo campaign newsletter
message notification alert warning error retry timeout success failure request response server client
api service database query index table record backup restore report export import upload download file
image video audio document folder share link public private team member admin owner role permission
access grant revoke audit log event metric dashboard chart graph trend growth revenue cost margin profit
budget forecast quarter month week day hour minute second today yesterday tomorrow morning evening night
support ticket issue bug feature release version update patch deploy build test stage production staging
network latency bandwidth storage memory disk cpu cluster node region zone replica primary standby lag
warehouse inventory stock supplier vendor partner contract agreement policy terms privacy cookie consent
language english french german spanish italian dutch polish swedish japanese chinese korean portuguese
red blue green black white gray yellow orange purple brown small medium large extra size color model
fast slow quick easy hard simple complex clear open closed active inactive enabled disabled visible hidden
great nice fine bad poor excellent average better worse best worst happy sad angry calm busy quiet loud
travel hotel flight train ticket booking reservation guest room night stay checkin checkout breakfast
food drink coffee tea water wine beer pizza pasta salad bread cheese fruit apple banana orange chicken
music movie book game sport football tennis running cycling swimming yoga fitness health doctor clinic
school course lesson student teacher exam grade class homework project deadline meeting agenda minutes
car bike bus taxi parking fuel electric charger battery engine repair service garage insurance claim
bank card credit debit transfer balance deposit withdraw loan rate interest tax fee charge bill receipt
gift wish list favorite saved recent popular trending featured recommended related similar new used
morning people year work life world hand part child eye woman place case week company system program
question government number group problem fact point area money story lot right study job word business
side kind head house friend father power hour game line end among ever stand turn keep start show hear
play run move live believe hold bring happen write provide sit lose pay meet include continue set learn
change lead understand watch follow stop create speak read allow add spend grow offer remember love
consider appear buy wait serve die send expect stay fall cut reach kill remain suggest raise pass sell
require decide return explain hope develop carry break receive agree support hit produce eat cover catch
draw choose cause point listen realize place close involve increase
""".split()  # noqa: SIM905
FIRST_NAMES = """
james mary robert patricia john jennifer michael linda david elizabeth william barbara richard susan
joseph jessica thomas sarah charles karen christopher lisa daniel nancy matthew betty anthony margaret
mark sandra donald ashley steven kimberly paul emily andrew donna joshua michelle kenneth carol kevin
amanda brian dorothy george melissa timothy deborah ronald stephanie edward rebecca jason sharon jeffrey
laura ryan cynthia jacob kathleen gary amy nicholas angela eric shirley jonathan anna stephen brenda
larry pamela justin emma scott nicole brandon helen benjamin samantha samuel katherine gregory christine
alexander debra frank rachel patrick carolyn raymond janet jack catherine dennis maria jerry heather
""".split()  # noqa: SIM905
LAST_NAMES = """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez gonzalez
wilson anderson thomas taylor moore jackson martin lee perez thompson white harris sanchez clark ramirez
lewis robinson walker young allen king wright scott torres nguyen hill flores green adams nelson baker
hall rivera campbell mitchell carter roberts gomez phillips evans turner diaz parker cruz edwards collins
reyes stewart morris morales murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed kelly
howard ramos kim cox ward richardson watson brooks chavez wood james bennett gray mendoza ruiz hughes
""".split()  # noqa: SIM905
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me", "example.com"]
COUNTRIES = "US US US US GB GB DE DE FR IN IN BR CA AU NL ES IT PL SE JP MX KR CH BE AT".split()  # noqa: SIM905


def _array(values: list[str]) -> str:
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


def _u(expr: str, salt: str) -> str:
    """SQL for a uniform [0, 1) value that is a function of ``expr``, ``salt`` and the seed."""
    return f"((hashtext(({expr})::text || '{salt}' || :seed) & 2147483647)::float8 / 2147483648.0)"


def _word(expr: str, salt: str) -> str:
    """SQL for one word of ``w`` (the words array), power-law distributed: rank = n * u^2."""
    return f"w[1 + floor({len(WORDS)} * power({_u(expr, salt)}, 2))::int]"


def _words(row: str, salt: str, count: str) -> str:
    """SQL for ``count`` space-separated power-law words (a correlated generate_series per row)."""
    return f"(SELECT string_agg({_word(f'{row} * 64 + j', salt)}, ' ') FROM generate_series(1, {count}) AS j)"


def statements(scale: float, seed: int) -> list[tuple[str, str]]:
    """Return (label, SQL) pairs that build the database at ``scale`` GB with ``seed`` (schema, rows, indexes)."""
    n = {table: max(100, int(rows * scale)) for table, rows in ROWS_PER_GB.items()}
    consts = (
        f"(SELECT {_array(WORDS)} AS w, {_array(FIRST_NAMES)} AS fnames, {_array(LAST_NAMES)} AS lnames, "
        f"{_array(DOMAINS)} AS domains, {_array(COUNTRIES)} AS countries) AS k"
    )

    def pick(array: str, size: int, expr: str, salt: str) -> str:
        return f"{array}[1 + floor({size} * {_u(expr, salt)})::int]"

    users = f"""
        INSERT INTO users
        SELECT i,
               md5(i::text || 'uuid' || :seed)::uuid,
               {pick("fnames", len(FIRST_NAMES), "i", "fe")} || '.' || {pick("lnames", len(LAST_NAMES), "i", "le")}
                   || (i % 997)::text || '@' || {pick("domains", len(DOMAINS), "i", "d")},
               initcap({pick("fnames", len(FIRST_NAMES), "i", "fn")}),
               initcap({pick("lnames", len(LAST_NAMES), "i", "ln")}),
               {pick("countries", len(COUNTRIES), "i", "c")},
               (ARRAY['active','active','active','active','inactive','suspended'])[1 + floor(6 * {_u("i", "s")})::int],
               round((power({_u("i", "b")}, 4) * 50000)::numeric, 2),
               timestamptz '2019-01-01' + {_u("i", "t")} * interval '2000 days',
               '$2b$12$' || left(md5(i::text || 'pw' || :seed) || md5(i::text || 'salt' || :seed), 53),
               CASE WHEN {_u("i", "hb")} < 0.4 THEN {_words("i", "bio", f"5 + floor(25 * {_u('i', 'bl')})::int")} END
        FROM generate_series(1, {n["users"]}) AS i, {consts}"""
    orders = f"""
        INSERT INTO orders
        SELECT i,
               1 + floor({n["users"]} * power({_u("i", "ou")}, 2))::bigint,
               timestamptz '2020-01-01' + {_u("i", "ot")} * interval '1800 days',
               (ARRAY['paid','paid','paid','paid','shipped','shipped','delivered','delivered','delivered',
                      'pending','cancelled','refunded'])[1 + floor(12 * {_u("i", "os")})::int],
               (ARRAY['USD','USD','USD','EUR','EUR','GBP','JPY','CAD'])[1 + floor(8 * {_u("i", "oc")})::int],
               round((5 + power({_u("i", "oa")}, 3) * 2000)::numeric, 2),
               1 + floor(power({_u("i", "oi")}, 2) * 12)::int,
               'pi_' || left(md5(i::text || 'pay' || :seed), 24),
               CASE WHEN {_u("i", "hn")} < 0.15 THEN {_words("i", "note", f"3 + floor(12 * {_u('i', 'nl')})::int")} END
        FROM generate_series(1, {n["orders"]}) AS i, {consts}"""
    kinds = ["page_view", "click", "search", "add_to_cart", "purchase", "login", "error"]
    payload = f"""CASE floor({_u("i", "ek")} * 7)::int
        WHEN 0 THEN jsonb_build_object('path', '/' || {_word("i", "p1")} || '/' ||
            {_word("i", "p2")}, 'referrer', {pick("domains", len(DOMAINS), "i", "rf")}, 'ms', floor(2000 *
            power({_u("i", "ms")}, 3))::int)
        WHEN 1 THEN jsonb_build_object('element', {_word("i", "el")} || '_button',
            'x', floor(1920 * {_u("i", "x")})::int, 'y', floor(1080 * {_u("i", "y")})::int)
        WHEN 2 THEN jsonb_build_object('query', {_words("i", "q", "1 + i % 4")},
            'results', floor(500 * power({_u("i", "r")}, 2))::int, 'page', 1 + i % 3)
        WHEN 3 THEN jsonb_build_object('sku', 'SKU-' || lpad((hashtext(i::text ||
            'sku') & 65535)::text, 5, '0'), 'qty', 1 + i % 5, 'price', round((power({_u("i", "pp")}, 2) *
            300)::numeric, 2))
        WHEN 4 THEN jsonb_build_object('order_id', 1 + (hashtext(i::text || 'po')
            & 2147483647) % {n["orders"]}, 'total', round((power({_u("i", "pt")}, 3) * 900)::numeric, 2),
            'currency', 'USD', 'coupon', CASE WHEN i % 9 = 0 THEN upper({_word("i", "cp")}) END)
        WHEN 5 THEN jsonb_build_object('ip', (hashtext(i::text || 'ip') & 255) ||
            '.' || (i % 256) || '.' || ((i / 256) % 256) || '.' || (hashtext(i::text) & 255), 'method',
            (ARRAY['password','sso','magic_link'])[1 + i % 3], 'mfa', i % 4 = 0)
        ELSE jsonb_build_object('code', 400 + (i % 7) * 17, 'message', {_words("i", "em", "4 + i % 6")},
            'retry', i % 2 = 0, 'trace', md5(i::text || 'trace'))
        END"""
    events = f"""
        INSERT INTO events
        SELECT i,
               1 + floor({n["users"]} * power({_u("i", "eu")}, 2))::bigint,
               timestamptz '2024-01-01' + {_u("i", "et")} * interval '365 days',
               ({_array(kinds)})[1 + floor(7 * {_u("i", "ek")})::int],
               {payload} || jsonb_build_object('device', (ARRAY['web','ios','android'])[1 + i % 3],
                   'session', left(md5(i / 7 || 'sess'), 16), 'request_id', md5(i::text || 'rq')::uuid),
               ARRAY(SELECT {_word("i * 8 + j", "tag")} FROM generate_series(1, (i % 4)) AS j)
        FROM generate_series(1, {n["events"]}) AS i, {consts}"""
    documents = f"""
        INSERT INTO documents
        SELECT i,
               1 + floor({n["users"]} * {_u("i", "du")})::bigint,
               initcap({_words("i", "title", "3 + i % 5")}),
               {_words("i", "body", f"300 + floor(1700 * {_u('i', 'dl')})::int")},
               timestamptz '2021-01-01' + {_u("i", "dt")} * interval '1400 days'
        FROM generate_series(1, {n["documents"]}) AS i, {consts}"""
    schema = """
        CREATE TABLE users (id bigint PRIMARY KEY, uid uuid NOT NULL, email text NOT NULL, first_name text,
            last_name text, country char(2), status text NOT NULL, balance numeric(12, 2), created_at timestamptz
            NOT NULL, password_hash text NOT NULL, bio text);
        CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, created_at timestamptz NOT NULL,
            status text NOT NULL, currency char(3) NOT NULL, amount numeric(12, 2) NOT NULL, items int NOT NULL,
            payment_ref text, note text);
        CREATE TABLE events (id bigint PRIMARY KEY, user_id bigint NOT NULL, occurred_at timestamptz NOT NULL,
            kind text NOT NULL, payload jsonb NOT NULL, tags text[] NOT NULL);
        CREATE TABLE documents (id bigint PRIMARY KEY, user_id bigint NOT NULL, title text NOT NULL, body text
            NOT NULL, updated_at timestamptz NOT NULL);
    """
    indexes = """
        CREATE UNIQUE INDEX users_email ON users (email, id);
        CREATE INDEX users_country_created ON users (country, created_at);
        CREATE INDEX orders_user_created ON orders (user_id, created_at);
        CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'pending';
        ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);
        CREATE INDEX events_user_occurred ON events (user_id, occurred_at);
        CREATE INDEX events_payload ON events USING gin (payload jsonb_path_ops);
        CREATE INDEX documents_user_updated ON documents (user_id, updated_at);
    """
    seed_text = f"'{seed}'"
    return [
        ("schema", schema),
        *(
            (f"rows: {name}", sql.replace(":seed", seed_text))
            for name, sql in (("users", users), ("orders", orders), ("events", events), ("documents", documents))
        ),
        ("indexes", indexes),
        ("vacuum", "VACUUM ANALYZE"),
    ]


def database_name(scale: float, seed: int) -> str:
    """Return the cached database's name for ``scale`` and ``seed`` (``opskit_bench_prod_0_5_1`` for 0.5, 1)."""
    return f"opskit_bench_prod_{str(scale).replace('.', '_')}_{seed}"


def ensure(scale: float, seed: int = 1, rebuild: bool = False) -> str:
    """Return the name of the production-like database at ``scale`` GB, building it unless cached.

    The database's comment records the generator version, scale and seed; one whose
    comment differs (or ``rebuild``) is dropped and built again. Raises psycopg.Error.
    """
    if not 0.01 <= scale <= 10:
        raise SystemExit(f"--scale {scale} is outside 0.01-10 (GB on disk)")
    name = database_name(scale, seed)
    marker = f"opskit bench dataset v{GENERATOR_VERSION} scale={scale} seed={seed} complete"
    with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    if row is not None and row[0] == marker and not rebuild:
        return name
    c.drop_database(name)
    print(f"building {name} ({scale} GB, seed {seed}; cached for later runs)...", flush=True)
    with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    started = time.perf_counter()
    with psycopg.connect(f"host={c.PG_HOST} user={c.PG_USER} dbname={name}", autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET synchronous_commit = off")
        for label, sql in statements(scale, seed):
            step = time.perf_counter()
            conn.execute(sql.encode())
            print(f"  {label}: {time.perf_counter() - step:.1f} s", flush=True)
    # The marker last: an interrupted build is never mistaken for a complete one.
    with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{marker}'")
    print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    return name


def compression_report(name: str) -> dict[str, int]:
    """Return the on-disk size, ``pg_dump -Fc`` size and plain (``-Z0``) size of ``name``, in bytes."""
    base = ["pg_dump", "-Fc", "-h", c.PG_HOST, "-U", c.PG_USER, name]
    sizes = {"disk": c.database_size(name)}
    for label, extra in (("dump", []), ("plain", ["-Z0"])):
        with subprocess.Popen([*base, *extra], stdout=subprocess.PIPE) as dump:
            stdout = dump.stdout
            assert stdout is not None
            total = 0
            while chunk := stdout.read(1 << 20):
                total += len(chunk)
            sizes[label] = total
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.5, help="GB on disk (0.1 to 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rebuild", action="store_true", help="drop and build again even if cached")
    args = parser.parse_args()
    name = ensure(args.scale, args.seed, args.rebuild)
    sizes = compression_report(name)
    print(
        f"{name}: on disk {c.fmt_bytes(sizes['disk'])}, pg_dump -Fc {c.fmt_bytes(sizes['dump'])} "
        f"({sizes['disk'] / sizes['dump']:.1f}x smaller than on disk), plain dump {c.fmt_bytes(sizes['plain'])} "
        f"(gzip {sizes['plain'] / sizes['dump']:.1f}x)"
    )


if __name__ == "__main__":
    main()
