-- Notifier state (issue 5): transition dedupe, the delivery outbox, what each alert episode
-- was told, and durable escalation / repeat timers. Every time column is written from the
-- notifier's clock (not now()), so tests can run it with a fast or fake clock.

-- Transitions already turned into notifications; the stream is at-least-once, so a
-- transition key (fingerprint:to_state:at) seen twice is acknowledged and skipped.
CREATE TABLE notifier_seen_transitions (
    key text PRIMARY KEY,
    stream_id text,
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (notification, channel): written in the same transaction that consumes the
-- stream entry or fires a timer, deleted never (sent rows are the notification log).
-- Rows of one channel with the same group_key that are pending together go out as one
-- message. A worker leases rows by setting locked_until; a crashed worker's lease expires
-- and another sends them (at most one duplicate per in-flight message).
CREATE TABLE notifier_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_key text NOT NULL,
    channel text NOT NULL,
    kind text NOT NULL
        CHECK (kind IN ('firing', 'repeat', 'escalated', 'acknowledged', 'resolved', 'test')),
    alert_id bigint REFERENCES alerts (id) ON DELETE CASCADE,
    group_key text NOT NULL,
    context jsonb NOT NULL,
    template_set text,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'given_up')),
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    locked_until timestamptz,
    locked_by text,
    sent_at timestamptz,
    last_status integer,
    last_error text,
    UNIQUE (notification_key, channel)
);
CREATE INDEX notifier_outbox_due ON notifier_outbox (channel, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX notifier_outbox_alert ON notifier_outbox (alert_id);

-- Per alert episode: which channels were told (they get the resolved notice), the escalation
-- policy, the repeat interval, and when each notice was queued.
CREATE TABLE notifier_episodes (
    alert_id bigint PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    fingerprint text NOT NULL,
    told_channels text[] NOT NULL DEFAULT '{}',
    policy text,
    repeat_interval double precision,
    template_set text,
    group_key text NOT NULL DEFAULT '',
    firing_notified_at timestamptz,
    acknowledged_notified_at timestamptz,
    resolved_notified_at timestamptz
);

-- Durable timers: escalation levels and repeat notices. Fired by whichever notifier process
-- gets the row first (FOR UPDATE SKIP LOCKED); cancelled by ack and resolve.
CREATE TABLE notifier_timers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('escalate', 'repeat')),
    level integer NOT NULL,
    due_at timestamptz NOT NULL,
    channels text[] NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'fired', 'cancelled')),
    fired_at timestamptz,
    UNIQUE (alert_id, kind, level)
);
CREATE INDEX notifier_timers_due ON notifier_timers (due_at) WHERE status = 'pending';
