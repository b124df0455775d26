-- migration 5: the sends in flight are counted in the store (what PostgreSQL needs for a fleet,
-- kept the same here so both backends share one contract).
ALTER TABLE outbox ADD COLUMN leased_until REAL;  -- a sender holds it until then
CREATE INDEX outbox_leased ON outbox (subscription_pk) WHERE status = 'pending' AND leased_until IS NOT NULL;

-- migration 6: result files kept (captures), claimed like polls: a claim moves next_attempt_at to
-- the end of its lease, out of the due range.
CREATE TABLE captures (
    pk              INTEGER PRIMARY KEY,
    task_pk         INTEGER NOT NULL REFERENCES tasks (pk) ON DELETE CASCADE,
    video_id        TEXT NOT NULL,
    variant         TEXT NOT NULL,             -- video (video_url), last_frame (last_frame_url), ...
    url             TEXT NOT NULL,
    status          TEXT NOT NULL,             -- pending, kept, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                      -- while pending: due time, or the end of a lease
    created_at      REAL NOT NULL,
    settled_at      REAL,
    size            INTEGER,
    sha256          TEXT,
    content_type    TEXT,
    key             TEXT,                      -- where the media store keeps it
    error           TEXT,
    UNIQUE (task_pk, variant)
);
CREATE INDEX captures_due ON captures (next_attempt_at) WHERE status = 'pending';

-- migration 7: the task list in the order tasks joined it (when they got their video id), not in
-- pk order: a task whose submit answer comes after a newer task's must not sort below a row a
-- client has already seen. Tasks listed before this migration keep their pk as their place.
ALTER TABLE tasks ADD COLUMN listed_seq INTEGER;
UPDATE tasks SET listed_seq = pk WHERE video_id IS NOT NULL;
CREATE INDEX tasks_listed ON tasks (listed_seq, pk) WHERE video_id IS NOT NULL;

-- migration 8: deduplication is scoped (store/records.py, NewDelivery.key): a delivery on a
-- per-task URL repeats only an earlier one of the same task, one on POST /webhooks only one
-- verified by the same secret. Keys kept before are respelled so their copies still repeat them:
-- a per-task one under its task's token hash; a workspace one, whose secret was not recorded,
-- under its video id, which every copy of it names (NewDelivery.legacy_key). The new spellings
-- start with t: or w:, which no key kept before did, so no two rows can meet on the way.
UPDATE deliveries
SET dedupe_key = 't:' || substr((SELECT token_hash FROM tasks WHERE tasks.pk = deliveries.task_pk), 1, 32)
    || ' ' || dedupe_key
WHERE route = 'task' AND task_pk IS NOT NULL;
UPDATE deliveries
SET dedupe_key = 'w:' || length(coalesce(video_id, '')) || ':' || coalesce(video_id, '') || ' ' || dedupe_key
WHERE route = 'workspace';

-- migration 9: a paused subscriber's pending sends are held out of the claims' index, so claims
-- and the dispatcher's wake-ups never walk them (a paused subscriber may keep a large backlog);
-- a subscriber's own sends (health, pause, resume, delete) and the subscriptions a client made
-- (their cap, their list) are read through indexes of their own.
ALTER TABLE outbox ADD COLUMN held INTEGER NOT NULL DEFAULT 0;  -- 1: its subscriber is paused
UPDATE outbox SET held = 1 WHERE status = 'pending'
    AND subscription_pk IN (SELECT pk FROM subscriptions WHERE status = 'paused');
DROP INDEX outbox_due;
CREATE INDEX outbox_ready ON outbox (next_attempt_at) WHERE status = 'pending' AND held = 0;
CREATE INDEX outbox_subscriber ON outbox (subscription_pk, event_pk);
CREATE INDEX subscriptions_listed ON subscriptions (pk) WHERE task_pk IS NULL AND status != 'deleted';

-- migration 10: retention (receiver.pruner). A task's bodies, events and sends are pruned once
-- it ended RECEIVER_RETENTION ago; its delivery rows stay with their dedupe key, outcome and
-- repeats (the task's delivery counts are derived from them, and a copy of a pruned delivery
-- must still be a duplicate), their body and headers emptied and pruned_at set. Task rows and
-- keys go after RECEIVER_TASK_RETENTION. A kept file past RECEIVER_MEDIA_RETENTION is deleted
-- and its capture row says "expired". One process prunes at a time: it holds the "prune" lease,
-- which also records the last pass for every process to show.
ALTER TABLE tasks ADD COLUMN pruned_at REAL;
ALTER TABLE deliveries ADD COLUMN pruned_at REAL;
CREATE INDEX tasks_prunable ON tasks (terminal_at) WHERE terminal_at IS NOT NULL AND pruned_at IS NULL;
CREATE INDEX tasks_ended ON tasks (terminal_at) WHERE terminal_at IS NOT NULL;
CREATE INDEX deliveries_task ON deliveries (task_pk) WHERE task_pk IS NOT NULL;
-- Deliveries that name no task (unmatched, or their task deleted): pruned by when they came.
CREATE INDEX deliveries_taskless ON deliveries (received_at) WHERE task_pk IS NULL;
CREATE INDEX deliveries_taskless_kept ON deliveries (received_at) WHERE task_pk IS NULL AND pruned_at IS NULL;
CREATE INDEX captures_kept ON captures (settled_at) WHERE status = 'kept';
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    until       REAL NOT NULL DEFAULT 0,
    last_at     REAL,                          -- when the last whole pass started
    last_took   REAL,                          -- its duration in seconds
    last_counts TEXT                           -- JSON: rows (and files) it deleted, by table
);
INSERT INTO leases (name) VALUES ('prune');

-- migration 11: /metrics and /v1/stats read counts kept as rows change, not a count over every
-- row at each scrape (anyone may scrape /metrics, and its cost must not grow with the store).
-- Triggers keep them in the transaction that changes the rows, whichever path writes or deletes
-- them (a pruner's deletes and foreign-key cascades included). A row whose count went back to 0
-- stays, and reads skip it. resolved_by is '' for a task resolved by nothing (a key column
-- cannot be NULL). The oldest open task is one probe of a partial index.
CREATE TABLE counts (
    kind        TEXT NOT NULL,                 -- tasks, outbox, captures
    status      TEXT NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    n           INTEGER NOT NULL,
    PRIMARY KEY (kind, status, resolved_by)
) WITHOUT ROWID;
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'tasks', status, coalesce(resolved_by, ''), count(*) FROM tasks GROUP BY 2, 3;
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'outbox', status, '', count(*) FROM outbox GROUP BY 2;
INSERT INTO counts (kind, status, resolved_by, n)
    SELECT 'captures', status, '', count(*) FROM captures GROUP BY 2;
CREATE TRIGGER tasks_counted AFTER INSERT ON tasks BEGIN
    INSERT INTO counts VALUES ('tasks', new.status, coalesce(new.resolved_by, ''), 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_recounted AFTER UPDATE OF status, resolved_by ON tasks
    WHEN old.status IS NOT new.status OR old.resolved_by IS NOT new.resolved_by BEGIN
    UPDATE counts SET n = n - 1
        WHERE kind = 'tasks' AND status = old.status AND resolved_by = coalesce(old.resolved_by, '');
    INSERT INTO counts VALUES ('tasks', new.status, coalesce(new.resolved_by, ''), 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_uncounted AFTER DELETE ON tasks BEGIN
    UPDATE counts SET n = n - 1
        WHERE kind = 'tasks' AND status = old.status AND resolved_by = coalesce(old.resolved_by, '');
END;
CREATE TRIGGER outbox_counted AFTER INSERT ON outbox BEGIN
    INSERT INTO counts VALUES ('outbox', new.status, '', 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER outbox_recounted AFTER UPDATE OF status ON outbox WHEN old.status IS NOT new.status BEGIN
    UPDATE counts SET n = n - 1 WHERE kind = 'outbox' AND status = old.status AND resolved_by = '';
    INSERT INTO counts VALUES ('outbox', new.status, '', 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER outbox_uncounted AFTER DELETE ON outbox BEGIN
    UPDATE counts SET n = n - 1 WHERE kind = 'outbox' AND status = old.status AND resolved_by = '';
END;
CREATE TRIGGER captures_counted AFTER INSERT ON captures BEGIN
    INSERT INTO counts VALUES ('captures', new.status, '', 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER captures_recounted AFTER UPDATE OF status ON captures WHEN old.status IS NOT new.status BEGIN
    UPDATE counts SET n = n - 1 WHERE kind = 'captures' AND status = old.status AND resolved_by = '';
    INSERT INTO counts VALUES ('captures', new.status, '', 1)
        ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER captures_uncounted AFTER DELETE ON captures BEGIN
    UPDATE counts SET n = n - 1 WHERE kind = 'captures' AND status = old.status AND resolved_by = '';
END;
CREATE INDEX tasks_open ON tasks (created_at) WHERE status IN ('submitting', 'queued', 'in_progress');
