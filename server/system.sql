-- Ripple's own SQL: the change capture, the commit clock, and every `_ripple_*` table and function.
--
-- Shipped in the package and applied by Ripple (server/database/catalog.py) BEFORE the app's schema.sql, which
-- then holds only the app's tables and indexes; after the app's SQL, `_ripple_on_start()` numbers every new app
-- table and attaches capture to it. Applied at every start whose files changed, possibly by several processes at
-- once and possibly twice in a row, so every statement is idempotent (IF NOT EXISTS, CREATE OR REPLACE, DO
-- blocks). PostgreSQL 15 and 16, core only. Ripple's own objects start with `_ripple_`.

-- Serialise concurrent appliers when the file runs as one transaction (asyncpg's execute of the whole file),
-- and keep the "already exists, skipping" notices of a re-run quiet.
SELECT pg_advisory_xact_lock(7264001000000000001), set_config('client_min_messages', 'warning', true);
-- ---------------------------------------------------------------------------------------------------------
-- Ripple system tables
-- ---------------------------------------------------------------------------------------------------------

-- Table numbers encoded in ids. Numbers are never reused, also after a table is dropped.
CREATE TABLE IF NOT EXISTS _ripple_tables (
    table_name   text COLLATE "C" PRIMARY KEY,
    table_number int NOT NULL UNIQUE CHECK (table_number BETWEEN 1 AND 65535)
);

-- The commit clock. A sequence, not a table: nextval/setval take no row locks and no SSI predicate locks,
-- so concurrent SERIALIZABLE writers never conflict on it. Persistent, so ts never goes backwards.
CREATE SEQUENCE IF NOT EXISTS _ripple_ts AS bigint MINVALUE 1;

-- One row per captured row change. Key objects hold the indexed columns (without _id, which is doc_id)
-- plus _creation_time; old_keys is NULL for an insert, new_keys NULL for a delete.
CREATE TABLE IF NOT EXISTS _ripple_changes (
    xid        bigint NOT NULL,
    table_name text COLLATE "C" NOT NULL,
    doc_id     text COLLATE "C" NOT NULL,
    old_keys   jsonb,
    new_keys   jsonb
);
CREATE INDEX IF NOT EXISTS _ripple_changes__xid ON _ripple_changes (xid);
-- A bulk write leaves thousands of rows with one xid; sampled statistics then say an xid matches much of the
-- table, and the hub's per-commit lookup became a scan of the whole log on every round. Each transaction
-- writes a few rows, so say so (taken into account from the next ANALYZE on).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = '_ripple_changes'::regclass AND attname = 'xid'
                      AND attoptions @> ARRAY['n_distinct=-0.5']) THEN
        ALTER TABLE _ripple_changes ALTER COLUMN xid SET (n_distinct = -0.5);
    END IF;
END
$$;

-- Holds the xid of each writing transaction between its first captured write and its COMMIT; the deferred
-- constraint trigger on it runs once, at COMMIT, and draws the commit ts.
CREATE TABLE IF NOT EXISTS _ripple_pending (
    xid bigint PRIMARY KEY
);

-- Commit order: ts counts commits (one sequence draw each, so consecutive unless a transaction aborted after
-- drawing); `at` is when the ts was drawn, for pruning and lag.
CREATE TABLE IF NOT EXISTS _ripple_commits (
    ts  bigint PRIMARY KEY,
    xid bigint NOT NULL UNIQUE,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Newest ts whose log rows were pruned: a reader that processed less than this must re-run everything.
CREATE TABLE IF NOT EXISTS _ripple_horizon (
    id int PRIMARY KEY CHECK (id = 1),
    ts bigint NOT NULL
);

-- Results of applied mutations, so a resent (session_id, request_id) is applied once.
CREATE TABLE IF NOT EXISTS _ripple_mutations (
    session_id  text COLLATE "C",
    request_id  bigint,
    result      jsonb,
    xid         bigint,  -- the applying transaction; its commit ts is in _ripple_commits
    ts          bigint,  -- unused since xid: the ts is drawn inside COMMIT, after this row is written
    created_at  timestamptz DEFAULT now(),
    caller      text COLLATE "C",  -- who sent it (token identifier, admin or not)
    path        text COLLATE "C",  -- the mutation's canonical path
    args_digest text COLLATE "C",  -- SHA-256 of its arguments as sent
    PRIMARY KEY (session_id, request_id)
);
-- Columns added since the first release. Checked first: ALTER TABLE takes an exclusive lock even when there is
-- nothing to do, and would hold up every writer of another running process while this script runs.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '_ripple_commits'::regclass AND attname = 'at') THEN
        ALTER TABLE _ripple_commits ADD COLUMN at timestamptz NOT NULL DEFAULT clock_timestamp();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '_ripple_mutations'::regclass AND attname = 'xid') THEN
        ALTER TABLE _ripple_mutations ADD COLUMN xid bigint;
        ALTER TABLE _ripple_mutations ALTER COLUMN ts DROP NOT NULL;
    END IF;
    -- Who sent the request and what it asked for: a resend replays the stored result only when all three match
    -- (server/database/database.py). NULL in rows written before these columns existed.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '_ripple_mutations'::regclass AND attname = 'caller') THEN
        ALTER TABLE _ripple_mutations ADD COLUMN caller text COLLATE "C", ADD COLUMN path text COLLATE "C",
            ADD COLUMN args_digest text COLLATE "C";
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS _ripple_mutations__created_at ON _ripple_mutations (created_at);

-- The scheduler (server/scheduler.py, server/functions/scheduling.py).
-- Convex's `_scheduled_functions` system table: one row per `ctx.scheduler.run_after/run_at`. A normal table
-- (`_id`, `_creation_time`, numbered and captured like app tables), so queries read it through `ctx.db.system`
-- and clients watch a job's state live. Its document is Convex's: name, args (an array holding the encoded
-- arguments object), scheduledTime (epoch ms), state ({"kind": "pending" | "inProgress" | "success" | "failed"
-- | "canceled"}, failed with "error"), completedTime. Ids come from the server (server/database/ids.py).
CREATE TABLE IF NOT EXISTS _scheduled_functions (
    _id            text COLLATE "C" PRIMARY KEY,
    _creation_time double precision NOT NULL,
    name           text COLLATE "C" NOT NULL,
    args           jsonb NOT NULL,
    scheduled_time double precision NOT NULL,
    state          jsonb NOT NULL,
    completed_time double precision
);
-- Due work in scheduled order. No `__` in the name: not a Convex index (the catalog and capture ignore it).
CREATE INDEX IF NOT EXISTS _scheduled_functions_due ON _scheduled_functions (scheduled_time, _creation_time)
    WHERE (state ->> 'kind') = 'pending';
-- Which executor runs an action (inProgress), and when that executor last said it was alive: an action whose
-- executor went quiet (a crash) is marked failed, never run again (actions run at most once).
CREATE TABLE IF NOT EXISTS _ripple_scheduled_claims (
    job_id   text COLLATE "C" PRIMARY KEY,
    executor text COLLATE "C" NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS _ripple_scheduled_claims_executor ON _ripple_scheduled_claims (executor);
-- Cron jobs (server/crons.py): the last tick of each job that a process took (scheduled or skipped) and the
-- `_scheduled_functions` row of its last run. A tick is taken under this row's lock, so each runs once.
CREATE TABLE IF NOT EXISTS _ripple_crons (
    name      text COLLATE "C" PRIMARY KEY,
    last_tick double precision,
    job_id    text COLLATE "C"
);

-- File storage (server/storage.py, server/functions/storage_ctx.py).
-- Convex's `_storage` system table: one row per stored file, inserted only once its bytes are safely stored (so a
-- row always has its file). Numbered and captured like app tables: queries read it through `ctx.db.system` and
-- see uploads live. sha256 is base64, as Convex's; size in bytes; content_type NULL when none was given.
CREATE TABLE IF NOT EXISTS _storage (
    _id            text COLLATE "C" PRIMARY KEY,
    _creation_time double precision NOT NULL,
    sha256         text NOT NULL,
    size           double precision NOT NULL,
    content_type   text
);
-- Upload URLs not used yet (`ctx.storage.generate_upload_url()`): the SHA-256 of each one-time token and when it
-- expires. An upload deletes its row before it reads a byte, so a URL works once; expired rows are deleted then too.
CREATE TABLE IF NOT EXISTS _ripple_storage_uploads (
    token_hash text COLLATE "C" PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- ---------------------------------------------------------------------------------------------------------
-- Functions used by column defaults
-- ---------------------------------------------------------------------------------------------------------

-- Epoch milliseconds, with microsecond precision, of the moment of the call (not of the transaction start,
-- so rows inserted later in one transaction get later _creation_time values).
CREATE OR REPLACE FUNCTION _ripple_now_ms() RETURNS double precision
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::double precision $$;

-- A new id for a document of `table_name`: 28 random hex + 4 hex table number + 4 hex check (first 4 hex of
-- md5 of the 32 before). The random part comes from gen_random_uuid() without its fixed version/variant
-- nibbles, so all 28 characters are random.
CREATE OR REPLACE FUNCTION _ripple_new_id(table_name text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    num  int;
    u    text := replace(gen_random_uuid()::text, '-', '');
    body text;
BEGIN
    SELECT t.table_number INTO num FROM _ripple_tables t WHERE t.table_name = _ripple_new_id.table_name;
    IF num IS NULL THEN
        RAISE EXCEPTION 'Ripple: table "%" is not registered in _ripple_tables (run _ripple_register_tables())',
            _ripple_new_id.table_name
            USING ERRCODE = 'undefined_table';
    END IF;
    body := substr(u, 1, 12) || substr(u, 14, 3) || substr(u, 18, 13) || lpad(to_hex(num), 4, '0');
    RETURN body || left(md5(body), 4);
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- The commit clock (ARCHITECTURE.md, "Change capture and the commit clock")
-- ---------------------------------------------------------------------------------------------------------

-- Why no lock serialises writers: holding a lock (or NOTIFY's own commit-order lock) until a COMMIT ends
-- serialises every commit including its WAL flush, which halves write throughput. Instead each writer holds
-- the clock key SHARED from drawing its ts until its COMMIT ends (shared holders never wait for each other).
-- ts order is then draw order, not always visibility order, so a reader that needs a snapshot holding exactly
-- the commits up to its newest ts S checks for it: every ts is one draw of the sequence, so when every number
-- between the last S it handled and S is a visible commit, nothing below S is missing. Otherwise (a writer was
-- between drawing and becoming visible, or a transaction aborted after drawing) it takes the key EXCLUSIVE
-- before a new snapshot (_ripple_settle, then _ripple_unsettle inside the first query): that waits for the
-- writers between drawing and becoming visible, and holds back new draws for that moment.
--
-- The commit ts of the current transaction.
--   * It captured writes and has no ts yet: take the clock key shared, draw ts, record (ts, xid), announce it
--     (below), remember it.
--   * It already has a ts: return it (the deferred trigger calls it again at COMMIT).
--   * It captured no write: return the clock's last value (0 if never drawn); nothing is recorded.
-- It reads no table that concurrent writers write (only settings and the sequence), so SERIALIZABLE
-- transactions never get a serialization failure from it.
--
-- The announcement is the ts, then (sometimes) a space and a JSON array of the captured changes ([table, _id,
-- old keys, new keys]). Hubs trust such a list to be ALL the changes of that ts and skip the log (a quiet round
-- advances past a commit whose listed changes touch no live query), hence:
--
--   INVARIANT: an announcement carries a change list ONLY when it is provably the whole of its commit's changes.
--   * Plain-SQL writers (NOTIFY inside their transaction) announce the ts alone, always: their ts may be drawn
--     before their last write (SET CONSTRAINTS ALL IMMEDIATE, an explicit SELECT _ripple_commit_ts()), and a
--     NOTIFY once queued cannot be taken back.
--   * Ripple's writers (ripple.notify = 'after_commit': their ts is drawn by the deferred trigger at COMMIT, and
--     app code cannot run SQL) announce their changes while they fit (about 7,000 bytes), as a NOTICE the writer
--     reads and in ripple.last_commit, which the writer NOTIFYs after COMMIT (a NOTIFY inside the transaction takes
--     a lock held until COMMIT ends, and so serialises writers). A captured write after the draw in the same
--     transaction (another deferred trigger, a TRUNCATE) degrades it to the ts alone (_ripple_written_after_draw):
--     ripple.last_commit is rewritten and the NOTICE raised again, and the writer keeps the last NOTICE.
CREATE OR REPLACE FUNCTION _ripple_commit_ts() RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    x       bigint := txid_current_if_assigned();
    seen    text;
    ts      bigint;
    changes text;
    said    text;
BEGIN
    IF x IS NULL OR current_setting('ripple.pending', true) IS DISTINCT FROM x::text THEN
        RETURN coalesce(pg_sequence_last_value('_ripple_ts'), 0);
    END IF;
    seen := current_setting('ripple.ts', true);
    IF seen IS NOT NULL AND seen <> '' THEN
        RETURN seen::bigint;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(7264001000000000002);
    ts := nextval('_ripple_ts');
    INSERT INTO _ripple_commits (ts, xid) VALUES (ts, x);
    IF current_setting('ripple.notify', true) IS DISTINCT FROM 'after_commit' THEN
        PERFORM pg_notify('ripple_commits', ts::text);  -- the ts alone: see the invariant above
    ELSE
        changes := current_setting('ripple.changes', true);
        said := ts::text || CASE WHEN changes IS NULL OR changes IN ('', '-') THEN '' ELSE ' [' || changes || ']' END;
        -- The writer NOTIFYs after COMMIT from ripple.last_commit, and learns its ts from this notice
        -- (server/database/writers.py).
        PERFORM set_config('ripple.last_commit', said, false);
        RAISE NOTICE 'ripple commit ts' USING DETAIL = said;
    END IF;
    PERFORM set_config('ripple.ts', ts::text, true);
    RETURN ts;
END
$$;

-- Called by the capture triggers for a captured write made after this transaction drew its ts: from now on its
-- changes are no longer all in its announcement, so a Ripple writer's announcement becomes the ts alone (see the
-- invariant above; a plain-SQL writer announced the ts alone already). Idempotent.
CREATE OR REPLACE FUNCTION _ripple_written_after_draw(ts text) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM set_config('ripple.changes', '-', true);
    IF current_setting('ripple.notify', true) = 'after_commit'
       AND current_setting('ripple.last_commit', true) IS DISTINCT FROM ts THEN
        PERFORM set_config('ripple.last_commit', ts, false);
        RAISE NOTICE 'ripple commit ts' USING DETAIL = ts;
    END IF;
END
$$;

-- True when the caller's snapshot holds every commit with a ts in (after_ts, upto]: each of those numbers was
-- drawn by a commit it sees (see above). A pruned range counts as missing, so the caller settles and then
-- finds the horizon past what it handled.
CREATE OR REPLACE FUNCTION _ripple_settled(after_ts bigint, upto bigint) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT count(*) FROM _ripple_commits c WHERE c.ts > after_ts AND c.ts <= upto) = upto - after_ts;
END
$$;

-- The reader's side of the clock key (see above). Call _ripple_settle() outside any transaction (it takes a
-- session lock), then BEGIN ISOLATION LEVEL REPEATABLE READ and call _ripple_unsettle() in the first query:
-- the snapshot is taken when that query starts, before the key is let go.
CREATE OR REPLACE FUNCTION _ripple_settle() RETURNS void
LANGUAGE sql VOLATILE
AS $$ SELECT pg_advisory_lock(7264001000000000002) $$;

CREATE OR REPLACE FUNCTION _ripple_unsettle() RETURNS boolean
LANGUAGE sql VOLATILE
AS $$ SELECT pg_advisory_unlock(7264001000000000002) $$;

-- Deferred constraint trigger on _ripple_pending: runs once per writing transaction, at COMMIT.
-- Nothing here reads _ripple_pending: any scan of it (even of the xid index) takes an SSI predicate lock on
-- what every other writer inserts into, and turns unrelated SERIALIZABLE transactions into serialization
-- failures. The rows of finished transactions are removed by _ripple_prune.
CREATE OR REPLACE FUNCTION _ripple_pending_commit() RETURNS trigger
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- The row is left for _ripple_prune: deleting it here would make every SERIALIZABLE writer scan (and so
    -- SIREAD-lock) a table all other writers insert into, turning concurrent commits into serialization failures.
    PERFORM _ripple_commit_ts();
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = '_ripple_pending'::regclass AND tgname = '_ripple_pending_commit') THEN
        CREATE CONSTRAINT TRIGGER _ripple_pending_commit
            AFTER INSERT ON _ripple_pending
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION _ripple_pending_commit();
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Change capture
-- ---------------------------------------------------------------------------------------------------------

-- Row trigger on every app table: a function per table (`_ripple_capture_<table number>`, written by
-- _ripple_install_capture from the template below) that names the key columns itself, so no row is turned
-- into jsonb whole (that and a loop over the key names were half the cost of a captured write). Appends one
-- _ripple_changes row; the transaction's first captured write also registers its xid in _ripple_pending
-- (once, remembered in the transaction-local setting ripple.pending), which arms the COMMIT-time trigger.
-- In Ripple's writers the changes also collect in the transaction-local setting ripple.changes for the commit's
-- announcement, up to about 7,000 bytes (a NOTIFY payload holds 8,000); past that, in plain-SQL writers, and after
-- the ts was drawn it says '-' and the log alone tells (see the invariant at _ripple_commit_ts).
-- %1$s and %2$s: the arguments of jsonb_build_object for the old and the new row's keys.
CREATE OR REPLACE FUNCTION _ripple_capture_template() RETURNS text
LANGUAGE sql IMMUTABLE
AS $template$ SELECT $body$
DECLARE
    x   bigint := txid_current();
    o   jsonb;
    n   jsonb;
    doc text;
    acc text;
    one text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        o := jsonb_build_object(%1$s);
        doc := OLD._id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        n := jsonb_build_object(%2$s);
        doc := NEW._id;
    END IF;
    IF current_setting('ripple.pending', true) IS DISTINCT FROM x::text THEN
        -- only Ripple's writers announce changes (see _ripple_commit_ts)
        IF current_setting('ripple.notify', true) = 'after_commit' THEN
            acc := '';
        ELSE
            acc := '-';
            PERFORM set_config('ripple.changes', acc, true);
        END IF;
        -- Set before the INSERT: under SET CONSTRAINTS ALL IMMEDIATE the COMMIT-time trigger fires at the end of
        -- that INSERT, and must find this transaction pending to draw its ts.
        PERFORM set_config('ripple.pending', x::text, true);
        INSERT INTO _ripple_pending (xid) VALUES (x);
    ELSE
        acc := current_setting('ripple.changes', true);
    END IF;
    one := current_setting('ripple.ts', true);
    IF one IS NOT NULL AND one <> '' THEN
        PERFORM _ripple_written_after_draw(one);  -- drawn already: this change is not in the announcement
        acc := '-';
    END IF;
    one := NULL;
    IF TG_OP = 'UPDATE' AND OLD._id IS DISTINCT FROM doc THEN
        -- an _id changed by plain SQL: the old document is gone and a new one appeared
        INSERT INTO _ripple_changes (xid, table_name, doc_id, old_keys, new_keys)
        VALUES (x, TG_TABLE_NAME, OLD._id, o, NULL);
        one := jsonb_build_array(TG_TABLE_NAME, OLD._id, o, NULL)::text || ',';
        o := NULL;
    END IF;
    INSERT INTO _ripple_changes (xid, table_name, doc_id, old_keys, new_keys) VALUES (x, TG_TABLE_NAME, doc, o, n);
    IF acc IS DISTINCT FROM '-' THEN
        one := coalesce(one, '') || jsonb_build_array(TG_TABLE_NAME, doc, o, n)::text;
        acc := CASE WHEN coalesce(acc, '') = '' THEN one ELSE acc || ',' || one END;
        PERFORM set_config('ripple.changes', CASE WHEN octet_length(acc) > 7000 THEN '-' ELSE acc END, true);
    END IF;
    RETURN NULL;
END
$body$::text $template$;

-- Statement trigger BEFORE TRUNCATE: row triggers do not fire on TRUNCATE, so record a delete for every row.
CREATE OR REPLACE FUNCTION _ripple_capture_truncate() RETURNS trigger
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    x   bigint := txid_current();
BEGIN
    EXECUTE format(
        'INSERT INTO _ripple_changes (xid, table_name, doc_id, old_keys, new_keys)
         SELECT $1, $2, t._id, (SELECT jsonb_object_agg(k, to_jsonb(t) -> k) FROM unnest($3::text[]) k), NULL
           FROM %I.%I t', TG_TABLE_SCHEMA, TG_TABLE_NAME)
    USING x, TG_TABLE_NAME, TG_ARGV;
    IF current_setting('ripple.pending', true) IS DISTINCT FROM x::text THEN
        PERFORM set_config('ripple.pending', x::text, true);  -- before the INSERT: see the capture template
        INSERT INTO _ripple_pending (xid) VALUES (x);
    END IF;
    IF coalesce(current_setting('ripple.ts', true), '') <> '' THEN
        PERFORM _ripple_written_after_draw(current_setting('ripple.ts', true));
    END IF;
    PERFORM set_config('ripple.changes', '-', true);  -- too many for an announcement: the log tells
    RETURN NULL;
END
$$;

-- Numbers every public table that has an `_id` column and is not numbered yet (app tables in name order, then
-- system tables such as `_scheduled_functions`, so adding one leaves the numbers of app tables as they were; after
-- the highest number ever given). Numbers are stored, so they are stable across runs.
CREATE OR REPLACE FUNCTION _ripple_register_tables() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    r    record;
    next int;
BEGIN
    SELECT coalesce(max(table_number), 0) + 1 INTO next FROM _ripple_tables;
    FOR r IN
        SELECT c.relname::text AS name
          FROM pg_class c
          JOIN pg_namespace s ON s.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = '_id' AND a.attnum > 0 AND NOT a.attisdropped
         WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p') AND left(c.relname, 8) <> '_ripple_'
           AND NOT EXISTS (SELECT 1 FROM _ripple_tables t WHERE t.table_name = c.relname::text)
         ORDER BY left(c.relname, 1) = '_', c.relname::text COLLATE "C"  -- system tables (`_x`) after app tables
    LOOP
        IF next > 65535 THEN
            RAISE EXCEPTION 'Ripple: no table numbers left for table "%"', r.name;
        END IF;
        INSERT INTO _ripple_tables (table_name, table_number) VALUES (r.name, next);
        next := next + 1;
    END LOOP;
END
$$;

-- (Re)creates the capture functions and triggers on every registered table that exists, idempotently: a
-- function whose text is already right and a trigger whose function and arguments are already right are left
-- alone (no lock taken on the table). The key columns are the columns of the table's `<table>__*` indexes in
-- index-name then key order, without `_id`, plus `_creation_time`.
CREATE OR REPLACE FUNCTION _ripple_install_capture() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    r       record;
    cols    text[];
    args    text;
    fn      text;
    src     text;
    want    bytea;
    calls   oid;
    trunc   bytea;
BEGIN
    FOR r IN
        SELECT c.oid AS rel, c.relname::text AS name, t.table_number AS number
          FROM _ripple_tables t
          JOIN pg_class c ON c.relname = t.table_name AND c.relkind IN ('r', 'p')
          JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = 'public'
         ORDER BY t.table_number
    LOOP
        SELECT coalesce(array_agg(col ORDER BY first_seen), '{}') INTO cols
          FROM (SELECT a.attname::text AS col, min(ic.relname::text COLLATE "C" || '/' || lpad(k.ord::text, 3, '0')) AS first_seen
                  FROM pg_index i
                  JOIN pg_class ic ON ic.oid = i.indexrelid
                  CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = r.rel AND k.attnum > 0
                   AND left(ic.relname, length(r.name) + 2) = r.name || '__'
                   AND a.attname NOT IN ('_id', '_creation_time')
                 GROUP BY a.attname) s;
        cols := cols || '_creation_time'::text;

        fn := '_ripple_capture_' || r.number;
        src := format(_ripple_capture_template(),
                      (SELECT string_agg(format('%L, OLD.%I', c, c), ', ') FROM unnest(cols) c),
                      (SELECT string_agg(format('%L, NEW.%I', c, c), ', ') FROM unnest(cols) c));
        IF NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
                        WHERE ns.nspname = 'public' AND p.proname = fn AND p.prosrc = src) THEN
            EXECUTE format('CREATE OR REPLACE FUNCTION public.%I() RETURNS trigger LANGUAGE plpgsql VOLATILE AS %L',
                           fn, src);
        END IF;

        SELECT string_agg(quote_literal(c), ', ') INTO args FROM unnest(cols) c;
        SELECT decode(string_agg(encode(convert_to(c, 'UTF8'), 'hex') || '00', ''), 'hex') INTO want
          FROM unnest(cols) c;

        SELECT tgfoid INTO calls FROM pg_trigger WHERE tgrelid = r.rel AND tgname = '_ripple_capture';
        IF calls IS DISTINCT FROM format('public.%I', fn)::regproc::oid THEN
            IF calls IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER _ripple_capture ON public.%I', r.name);
            END IF;
            EXECUTE format('CREATE TRIGGER _ripple_capture AFTER INSERT OR UPDATE OR DELETE ON public.%I '
                           'FOR EACH ROW EXECUTE FUNCTION public.%I()', r.name, fn);
        END IF;

        SELECT tgargs INTO trunc FROM pg_trigger WHERE tgrelid = r.rel AND tgname = '_ripple_capture_truncate';
        IF trunc IS DISTINCT FROM want THEN
            IF trunc IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER _ripple_capture_truncate ON public.%I', r.name);
            END IF;
            EXECUTE format('CREATE TRIGGER _ripple_capture_truncate BEFORE TRUNCATE ON public.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION _ripple_capture_truncate(%s)', r.name, args);
        END IF;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Reading and pruning the log
-- ---------------------------------------------------------------------------------------------------------

-- Newest commit ts visible to the caller's snapshot (or the pruned horizon, or 0). Meant for REPEATABLE READ
-- readers (the hub); a SERIALIZABLE writer should not call it (it reads _ripple_commits, which writers write).
-- PL/pgSQL, not SQL: a SQL function with sub-selects is not inlined and is planned again on every call, which
-- cost the hub more than the rest of its round.
CREATE OR REPLACE FUNCTION _ripple_latest_ts() RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN greatest(coalesce((SELECT max(ts) FROM _ripple_commits), 0),
                    coalesce((SELECT h.ts FROM _ripple_horizon h WHERE h.id = 1), 0));
END
$$;

-- The head of a hub round, read in the caller's REPEATABLE READ snapshot: its newest ts S, whether it holds every
-- commit in (after_ts, S] (see "the clock key" above; after _ripple_settle(), `after_settle` lets go of the key
-- instead, which is always true: the snapshot was taken when the calling statement started), the pruned horizon,
-- and when S was drawn. The hub reads it with the log (server/hub/changes.py) or, when the commits announced
-- their changes, alone inside the first statement of a re-run (_ripple_round_head_notice).
CREATE OR REPLACE FUNCTION _ripple_round_head(after_ts bigint, after_settle boolean)
RETURNS TABLE (snapshot_ts bigint, settled boolean, horizon bigint, drawn_at double precision)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    snapshot_ts := _ripple_latest_ts();
    settled := CASE WHEN after_settle THEN _ripple_unsettle() ELSE _ripple_settled(after_ts, snapshot_ts) END;
    horizon := coalesce((SELECT hz.ts FROM _ripple_horizon hz WHERE hz.id = 1), 0);
    drawn_at := (SELECT extract(epoch FROM c.at)::double precision FROM _ripple_commits c WHERE c.ts = snapshot_ts);
    RETURN NEXT;
END
$$;

-- Replaced by the hub's log read (server/hub/changelog.py); dropped from databases that still have it.
DROP FUNCTION IF EXISTS _ripple_round_head_notice(bigint);

-- Deletes the commits older than keep_ms (by `at`) with their change rows, mutation-dedupe rows older
-- than keep_ms, and stray pending rows of finished transactions; raises the horizon to the newest pruned
-- ts. Returns the number of commits pruned.
CREATE OR REPLACE FUNCTION _ripple_prune(keep_ms double precision) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    cutoff timestamptz := clock_timestamp() - make_interval(secs => keep_ms / 1000);
    newest bigint;
    n      bigint;
BEGIN
    WITH gone AS (
        DELETE FROM _ripple_commits WHERE at < cutoff RETURNING ts, xid
    ), changes AS (
        DELETE FROM _ripple_changes c USING gone WHERE c.xid = gone.xid
    )
    SELECT max(ts), count(*) INTO newest, n FROM gone;
    IF newest IS NOT NULL THEN
        INSERT INTO _ripple_horizon (id, ts) VALUES (1, newest)
        ON CONFLICT (id) DO UPDATE SET ts = greatest(_ripple_horizon.ts, excluded.ts);
    END IF;
    DELETE FROM _ripple_mutations WHERE created_at < now() - make_interval(secs => keep_ms / 1000);
    -- Finished scheduled functions are kept 7 days, as Convex keeps them (pending and running ones always).
    DELETE FROM _scheduled_functions
     WHERE state ->> 'kind' IN ('success', 'failed', 'canceled')
       AND completed_time < _ripple_now_ms() - 7 * 24 * 3600 * 1000.0;
    DELETE FROM _ripple_pending p
     WHERE p.xid < txid_snapshot_xmin(txid_current_snapshot());
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Every start, also when this file is unchanged and so not applied again (server/database/catalog.py)
-- ---------------------------------------------------------------------------------------------------------

-- Numbers new tables and installs the capture triggers (also on tables created by hand since the last start),
-- and moves a ts sequence that was set back (by hand, or by a restore that did not carry it) past every
-- recorded ts. Takes no lock when there is nothing to do. (No clock key for the sequence: waiting for it while
-- holding other locks could deadlock with a writer of another process; when it is not behind, nothing is set.)
CREATE OR REPLACE FUNCTION _ripple_on_start() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM _ripple_register_tables();
    PERFORM _ripple_install_capture();
    PERFORM setval('_ripple_ts', r.ts)
       FROM (SELECT greatest((SELECT max(ts) FROM _ripple_commits), (SELECT max(ts) FROM _ripple_horizon)) AS ts) r
      WHERE r.ts > coalesce(pg_sequence_last_value('_ripple_ts'), 0);
END
$$;

-- Which version of this file, the app's schema.sql and its migrations was applied last (a SHA-256 of them all):
-- unchanged files are not applied again, because CREATE INDEX IF NOT EXISTS and the like lock their tables even
-- when there is nothing to do, holding up the writers of other running processes. DELETE the row to make the
-- next start apply them again.
CREATE TABLE IF NOT EXISTS _ripple_schema (
    id         int PRIMARY KEY CHECK (id = 1),
    digest     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- The app tables that schema.sql declared when it was last applied: a table missing from it since was dropped from
-- the file (a change to approve); any other table in the database was made by hand and is left alone. NULL (a
-- database from before this column): every table counts as declared.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '_ripple_schema'::regclass AND attname = 'tables') THEN
        ALTER TABLE _ripple_schema ADD COLUMN tables text[];
    END IF;
END
$$;

-- The app's migration files (`migrations/NNN_name.sql` beside its schema.sql) applied so far, each once, in name
-- order (server/database/migrations.py). A database made from scratch records them all without running them:
-- its tables come from schema.sql, which already says what the migrations lead to.
CREATE TABLE IF NOT EXISTS _ripple_migrations (
    name       text COLLATE "C" PRIMARY KEY,
    digest     text NOT NULL,
    ran        boolean NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- `_ripple_on_start()` runs after the app's SQL (server/database/catalog.py), so app tables are numbered before
-- system tables such as `_scheduled_functions`.

-- The generic capture function of earlier versions: every trigger now calls its table's own (one still made by
-- hand on it keeps it).
DO $$
BEGIN
    DROP FUNCTION IF EXISTS _ripple_capture();
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;
END
$$;
