-- This app's tables and indexes (Ripple adds its own). Convex table `messages` = table `messages`, fields are
-- snake_case columns; every table has `_id` and `_creation_time` as below. Convex index `by_channel` on
-- `messages` = index "messages__by_channel" on (its fields NULLS FIRST, _creation_time, _id).
-- Statements must be idempotent (IF NOT EXISTS): the file is applied at every start that finds it changed.
-- Adding a table, column or index applies at once (also under `ripple dev`); dropping or retyping data is
-- refused until approved (`ripple serve --allow-destructive-schema`, or a migrations/NNN_name.sql file).

CREATE TABLE IF NOT EXISTS messages (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('messages'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    channel        text COLLATE "C" NOT NULL,
    author         text COLLATE "C" NOT NULL,
    body           text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS "messages__by_channel" ON messages (channel NULLS FIRST, _creation_time, _id);
