-- migration 1: the whole schema, as SQLite has it after its step 4, shaped for many writers.
-- Times are Unix seconds (double precision) as in SQLite; JSON is kept as text (written and
-- read by orjson, never queried inside) except a subscription's event types.
-- `tx` is the writing transaction's id: readers that follow a table (the event stream, list
-- cursors) order by (tx, pk) and read only below the oldest running transaction, so a row
-- that commits late is never skipped (a smaller id can commit later under concurrent writers).
CREATE TABLE tasks (
    pk                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_id          text UNIQUE,
    token_hash        text NOT NULL UNIQUE,
    status            text NOT NULL,
    model             text NOT NULL,
    video             text NOT NULL,
    request           text NOT NULL,
    callback_url      text,
    idem_scope        text,
    idem_key          text,
    request_hash      text,
    created_at        double precision NOT NULL,
    updated_at        double precision NOT NULL,
    terminal_at       double precision,
    resolved_by       text,
    polls             integer NOT NULL DEFAULT 0,
    anomalies         integer NOT NULL DEFAULT 0,
    next_poll_at      double precision,
    poll_failures     integer NOT NULL DEFAULT 0,
    confirm_pending   boolean NOT NULL DEFAULT false,
    expires_at        double precision,
    last_open_poll_at double precision,
    completion        double precision,
    listed_tx         bigint,                  -- the transaction that gave it its video id
    UNIQUE (idem_scope, idem_key)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL;
CREATE INDEX tasks_status ON tasks (status, pk);
CREATE INDEX tasks_listed ON tasks (listed_tx, pk) WHERE video_id IS NOT NULL;
CREATE INDEX tasks_model_terminal ON tasks (model, terminal_at) WHERE terminal_at IS NOT NULL;

CREATE TABLE deliveries (
    pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- public id: dlv_<pk>
    dedupe_key   text NOT NULL UNIQUE,
    task_pk      bigint REFERENCES tasks (pk) ON DELETE SET NULL,
    video_id     text,
    route        text NOT NULL,
    verified_by  text NOT NULL,
    headers      text NOT NULL,
    body         bytea NOT NULL,
    event_type   text,
    status       text,
    outcome      text NOT NULL,
    repeats      integer NOT NULL DEFAULT 0,
    received_at  double precision NOT NULL,
    last_seen_at double precision NOT NULL,
    tx           bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX deliveries_video ON deliveries (video_id, pk);
CREATE INDEX deliveries_task ON deliveries (task_pk);
CREATE INDEX deliveries_order ON deliveries (tx, pk);
CREATE INDEX deliveries_unmatched ON deliveries (video_id) WHERE outcome = 'unmatched';

CREATE TABLE events (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    task_pk     bigint NOT NULL UNIQUE REFERENCES tasks (pk),  -- one terminal result, one event
    video_id    text NOT NULL,
    type        text NOT NULL,
    created_at  double precision NOT NULL,
    data        text NOT NULL,
    tx          bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint
);
CREATE INDEX events_video ON events (video_id);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_order ON events (tx, pk);

CREATE TABLE subscriptions (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    url         text NOT NULL,
    events      jsonb,                         -- list of event types; NULL: all
    secret      text NOT NULL,
    status      text NOT NULL,
    task_pk     bigint UNIQUE REFERENCES tasks (pk) ON DELETE CASCADE,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    disabled_reason text
);

CREATE TABLE outbox (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_pk        bigint NOT NULL REFERENCES events (pk),
    subscription_pk bigint NOT NULL REFERENCES subscriptions (pk) ON DELETE CASCADE,
    replay_id       text,
    status          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    created_at      double precision NOT NULL,
    settled_at      double precision,
    last_status     integer,
    last_error      text,
    leased_until    double precision           -- a process is sending it until then (fleet limits)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_leased ON outbox (subscription_pk) WHERE status = 'pending' AND leased_until IS NOT NULL;
CREATE INDEX outbox_event ON outbox (event_pk);
CREATE INDEX outbox_dead ON outbox (subscription_pk, pk) WHERE status = 'dead';
CREATE INDEX outbox_replay ON outbox (replay_id) WHERE replay_id IS NOT NULL;

CREATE TABLE attempts (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_pk   bigint NOT NULL REFERENCES outbox (pk) ON DELETE CASCADE,
    at          double precision NOT NULL,
    status      integer,
    latency_ms  double precision NOT NULL,
    error       text
);
CREATE INDEX attempts_outbox ON attempts (outbox_pk);

-- migration 2: result files kept (captures), claimed like polls: a claim moves next_attempt_at to the end of its lease.
CREATE TABLE captures (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_pk         BIGINT NOT NULL REFERENCES tasks (pk) ON DELETE CASCADE,
    video_id        TEXT NOT NULL,
    variant         TEXT NOT NULL,
    url             TEXT NOT NULL,
    status          TEXT NOT NULL,             -- pending, kept, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,          -- while pending: due time, or the end of a lease
    created_at      DOUBLE PRECISION NOT NULL,
    settled_at      DOUBLE PRECISION,
    size            BIGINT,
    sha256          TEXT,
    content_type    TEXT,
    key             TEXT,
    error           TEXT,
    UNIQUE (task_pk, variant)
);
CREATE INDEX captures_due ON captures (next_attempt_at) WHERE status = 'pending';

-- migration 3: the ack path writes a batch in one statement that checks what it was decided on.
-- receiver_check(false) aborts that statement as a serialization failure (SQLSTATE 40001): the
-- writer reads and decides the batch again.
CREATE FUNCTION receiver_check(ok boolean) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'the rows this batch was decided on changed before it was written'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END
$$;

-- migration 4: a delivery's task reference is kept by the writers' locking, not by a foreign key.
-- Every statement that stores a delivery naming a task holds that task's row lock (FOR UPDATE, in
-- the batch's `locked` part), and the one DELETE of a task (an abandoned submit) takes the same
-- lock and deletes only a task no delivery names: the reference cannot dangle. The constraint's
-- check ran once per inserted delivery, about a tenth of the server's CPU on the ack path.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_task_pk_fkey;

-- migration 5: deduplication is scoped (store/records.py, NewDelivery.key): a delivery on a
-- per-task URL repeats only an earlier one of the same task, one on POST /webhooks only one
-- verified by the same secret. Keys kept before are respelled so their copies still repeat them:
-- a per-task one under its task's token hash; a workspace one, whose secret was not recorded,
-- under its video id, which every copy of it names (NewDelivery.legacy_key). The new spellings
-- start with t: or w:, which no key kept before did, so no two rows can meet on the way.
UPDATE deliveries d
SET dedupe_key = 't:' || substr(t.token_hash, 1, 32) || ' ' || d.dedupe_key
FROM tasks t
WHERE d.route = 'task' AND t.pk = d.task_pk;
UPDATE deliveries
SET dedupe_key = 'w:' || length(coalesce(video_id, '')) || ':' || coalesce(video_id, '') || ' ' || dedupe_key
WHERE route = 'workspace';

-- migration 6: a paused subscriber's pending sends are held out of the claims' index, so claims
-- and the dispatcher's wake-ups never walk them (a paused subscriber may keep a large backlog);
-- a subscriber's own sends (health, pause, resume, delete) and the subscriptions a client made
-- (their cap, their list) are read through indexes of their own.
ALTER TABLE outbox ADD COLUMN held boolean NOT NULL DEFAULT false;  -- its subscriber is paused
UPDATE outbox SET held = true WHERE status = 'pending'
    AND subscription_pk IN (SELECT pk FROM subscriptions WHERE status = 'paused');
DROP INDEX outbox_due;
CREATE INDEX outbox_ready ON outbox (next_attempt_at) WHERE status = 'pending' AND NOT held;
CREATE INDEX outbox_subscriber ON outbox (subscription_pk, event_pk);
CREATE INDEX subscriptions_listed ON subscriptions (pk) WHERE task_pk IS NULL AND status <> 'deleted';

-- migration 7: retention (receiver.pruner), as SQLite's migration 10. A task's bodies, events and
-- sends are pruned once it ended RECEIVER_RETENTION ago; its delivery rows stay with their dedupe
-- key, outcome and repeats (the task's delivery counts are derived from them, and a copy of a
-- pruned delivery must still be a duplicate), body and headers emptied and pruned_at set. Task
-- rows and keys go after RECEIVER_TASK_RETENTION; a kept file past RECEIVER_MEDIA_RETENTION is
-- deleted and its row says "expired". One process prunes at a time: it holds the "prune" lease,
-- which also records the last pass for every process to show.
-- Autovacuum: a pass deletes or rewrites in a few minutes what arrived in the same span a month
-- ago, so the tables it touches get the small scale factor tasks and outbox have (2% dead rows,
-- not the default 20%, which on ten million deliveries lets two million dead tuples pile up
-- before a vacuum makes their space reusable), and no cost delay on the tables written on the ack
-- path, so a vacuum finishes between passes rather than trailing them. Measured (300 tasks a day,
-- 5 days' bodies, 8 days' tasks, a pass a day): with a plain VACUUM after each pass, which is what
-- these thresholds make autovacuum do, the four tables stay at 7.2 MB from day 12 on; with none
-- they grow by 0.9 MB a day (21.5 MB and 45,000 dead rows at day 24).
ALTER TABLE tasks ADD COLUMN pruned_at double precision;
ALTER TABLE deliveries ADD COLUMN pruned_at double precision;
CREATE INDEX tasks_prunable ON tasks (terminal_at) WHERE terminal_at IS NOT NULL AND pruned_at IS NULL;
CREATE INDEX tasks_ended ON tasks (terminal_at) WHERE terminal_at IS NOT NULL;
CREATE INDEX deliveries_taskless ON deliveries (received_at) WHERE task_pk IS NULL;
CREATE INDEX deliveries_taskless_kept ON deliveries (received_at) WHERE task_pk IS NULL AND pruned_at IS NULL;
CREATE INDEX captures_kept ON captures (settled_at) WHERE status = 'kept';
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE outbox SET (autovacuum_vacuum_cost_delay = 0);
ALTER TABLE attempts SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE captures SET (autovacuum_vacuum_scale_factor = 0.05);
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text,
    until       double precision NOT NULL DEFAULT 0,
    last_at     double precision,              -- when the last whole pass started
    last_took   double precision,              -- its duration in seconds
    last_counts text                           -- JSON: rows (and files) it deleted, by table
);
INSERT INTO leases (name) VALUES ('prune');

-- migration 8: /metrics and /v1/stats read counts kept as rows change, not a count over every
-- row at each scrape (anyone may scrape /metrics, and its cost must not grow with the store).
-- Triggers record each change in the transaction that makes it, whichever path writes or deletes
-- the rows (a pruner's deletes and foreign-key cascades included). They only append to
-- count_changes, so writers in many processes never wait on one hot counter row; fold_counts
-- (under an advisory lock, one process at a time) moves the appended changes into counts, and a
-- read sums counts with the changes not folded yet: a fixed number of rows plus the changes since
-- the last fold. resolved_by is '' for a task resolved by nothing (a key column cannot be NULL).
-- The oldest open task is one probe of a partial index.
CREATE TABLE counts (
    kind        text NOT NULL,                 -- tasks, outbox, captures
    status      text NOT NULL,
    resolved_by text NOT NULL DEFAULT '',
    n           bigint NOT NULL,
    PRIMARY KEY (kind, status, resolved_by)
);
CREATE TABLE count_changes (
    kind        text NOT NULL,
    status      text NOT NULL,
    resolved_by text NOT NULL,
    n           integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'tasks', status, coalesce(resolved_by, ''), count(*) FROM tasks GROUP BY 2, 3;
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'outbox', status, '', count(*) FROM outbox GROUP BY 2;
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'captures', status, '', count(*) FROM captures GROUP BY 2;
CREATE FUNCTION receiver_count_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO count_changes VALUES ('tasks', OLD.status, coalesce(OLD.resolved_by, ''), -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO count_changes VALUES ('tasks', NEW.status, coalesce(NEW.resolved_by, ''), 1);
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION receiver_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO count_changes VALUES (TG_TABLE_NAME, OLD.status, '', -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO count_changes VALUES (TG_TABLE_NAME, NEW.status, '', 1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_counted AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION receiver_count_task();
CREATE TRIGGER tasks_recounted AFTER UPDATE OF status, resolved_by ON tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.resolved_by IS DISTINCT FROM NEW.resolved_by)
    EXECUTE FUNCTION receiver_count_task();
CREATE TRIGGER outbox_counted AFTER INSERT OR DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION receiver_count_status();
CREATE TRIGGER outbox_recounted AFTER UPDATE OF status ON outbox FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION receiver_count_status();
CREATE TRIGGER captures_counted AFTER INSERT OR DELETE ON captures
    FOR EACH ROW EXECUTE FUNCTION receiver_count_status();
CREATE TRIGGER captures_recounted AFTER UPDATE OF status ON captures FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION receiver_count_status();
CREATE INDEX tasks_open ON tasks (created_at) WHERE status IN ('submitting', 'queued', 'in_progress');
