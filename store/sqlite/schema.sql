-- migration 1: tasks and the inbound deliveries that move them.
CREATE TABLE tasks (
    pk               INTEGER PRIMARY KEY,
    video_id         TEXT UNIQUE,              -- the provider's id; NULL until it answers our submit
    token_hash       TEXT NOT NULL UNIQUE,     -- sha256 of the callback token (the token is a credential)
    status           TEXT NOT NULL,            -- submitting, queued, in_progress, completed, failed
    model            TEXT NOT NULL,
    video            TEXT NOT NULL,            -- JSON: the provider's object as we last know it
    request          TEXT NOT NULL,            -- JSON: the client's submit body
    callback_url     TEXT,                     -- the client's own subscriber for this task
    idem_scope       TEXT,
    idem_key         TEXT,
    request_hash     TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    terminal_at      REAL,
    resolved_by      TEXT,                     -- webhook, poll, deadline
    polls            INTEGER NOT NULL DEFAULT 0,
    anomalies        INTEGER NOT NULL DEFAULT 0,
    next_poll_at     REAL,                     -- NULL once terminal
    poll_failures    INTEGER NOT NULL DEFAULT 0,
    confirm_pending  INTEGER NOT NULL DEFAULT 0, -- a thin/unsigned delivery awaits our confirming GET
    expires_at       REAL,
    UNIQUE (idem_scope, idem_key)
);
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX tasks_status ON tasks (status, pk);

-- A task's delivery counts are derived from its rows (count + repeats): the ack path writes
-- one row and touches the task only when its state changes.
CREATE TABLE deliveries (
    pk           INTEGER PRIMARY KEY,          -- public id: dlv_<pk>
    dedupe_key   TEXT NOT NULL UNIQUE,
    task_pk      INTEGER REFERENCES tasks (pk) ON DELETE SET NULL,
    video_id     TEXT,
    route        TEXT NOT NULL,                -- task (per-task URL) or workspace
    verified_by  TEXT NOT NULL,                -- standard-v1, standard-v1a, openrouter, unsigned
    headers      TEXT NOT NULL,                -- JSON, secrets redacted
    body         BLOB NOT NULL,
    event_type   TEXT,
    status       TEXT,
    outcome      TEXT NOT NULL,
    repeats      INTEGER NOT NULL DEFAULT 0,
    received_at  REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE INDEX deliveries_video ON deliveries (video_id, pk);
CREATE INDEX deliveries_unmatched ON deliveries (video_id) WHERE outcome = 'unmatched';

-- migration 2: what the poll schedule learns from, and one event per terminal result.
ALTER TABLE tasks ADD COLUMN last_open_poll_at REAL;  -- last poll that found the task still open
ALTER TABLE tasks ADD COLUMN completion REAL;         -- estimated seconds from submit to result
CREATE INDEX tasks_model_terminal ON tasks (model, terminal_at) WHERE terminal_at IS NOT NULL;

CREATE TABLE events (
    pk          INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,          -- evt_...: the webhook-id on every send and replay
    task_pk     INTEGER NOT NULL UNIQUE REFERENCES tasks (pk),  -- one terminal result, one event
    video_id    TEXT NOT NULL,
    type        TEXT NOT NULL,                 -- video.completed or video.failed
    created_at  REAL NOT NULL,
    data        TEXT NOT NULL                  -- JSON: the video object as recorded
);
CREATE INDEX events_video ON events (video_id);

-- migration 3: downstream fan-out: subscriptions, a transactional outbox, attempts.
CREATE TABLE subscriptions (
    pk          INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,          -- sub_...
    url         TEXT NOT NULL,
    events      TEXT,                          -- JSON list of event types; NULL: all
    secret      TEXT NOT NULL,                 -- whsec_...
    status      TEXT NOT NULL,                 -- active, paused, disabled
    task_pk     INTEGER UNIQUE REFERENCES tasks (pk) ON DELETE CASCADE,  -- a task's own callback_url
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    disabled_reason TEXT
);

CREATE TABLE outbox (
    pk              INTEGER PRIMARY KEY,
    event_pk        INTEGER NOT NULL REFERENCES events (pk),
    subscription_pk INTEGER NOT NULL REFERENCES subscriptions (pk) ON DELETE CASCADE,
    replay_id       TEXT,                      -- rpl_... when queued by a replay
    status          TEXT NOT NULL,             -- pending, delivered, failed, dead, cancelled
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                      -- NULL once settled
    created_at      REAL NOT NULL,
    settled_at      REAL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_event ON outbox (event_pk);
CREATE INDEX outbox_dead ON outbox (subscription_pk, pk) WHERE status = 'dead';
CREATE INDEX outbox_replay ON outbox (replay_id) WHERE replay_id IS NOT NULL;

CREATE TABLE attempts (
    pk          INTEGER PRIMARY KEY,
    outbox_pk   INTEGER NOT NULL REFERENCES outbox (pk) ON DELETE CASCADE,
    at          REAL NOT NULL,
    status      INTEGER,                       -- the subscriber's HTTP status; NULL: no answer
    latency_ms  REAL NOT NULL,
    error       TEXT
);
CREATE INDEX attempts_outbox ON attempts (outbox_pk);
CREATE INDEX events_created ON events (created_at);
