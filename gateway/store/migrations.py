"""Named, append-only schema migrations. A landed migration is never edited: add a new one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("clinic-gateway")


@MIGRATIONS(name="0001_initial")
def _initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE meters (
            meter_id TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            transport TEXT NOT NULL,
            serial TEXT NOT NULL,
            model TEXT,
            firmware TEXT,
            address TEXT,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            last_sync TEXT,
            last_sequence INTEGER,
            last_error TEXT
        );
        -- A desk session: one meter download or one retinal capture series for one patient.
        CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('meter', 'retina')),
            patient_id TEXT,
            meter_id TEXT,
            operator TEXT,
            state TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            records_total INTEGER,
            records_new INTEGER NOT NULL DEFAULT 0,
            error TEXT
        );
        CREATE TABLE readings (
            id INTEGER PRIMARY KEY,
            reading_id TEXT NOT NULL UNIQUE,
            identity TEXT NOT NULL UNIQUE,      -- DESIGN §2: (meter_id, sequence) or (meter_id, time, value)
            meter_id TEXT NOT NULL,
            sequence INTEGER,
            meter_time TEXT NOT NULL,
            clock_offset_s REAL NOT NULL,
            corrected_time TEXT NOT NULL,
            time_trusted INTEGER NOT NULL,
            value REAL NOT NULL,
            unit TEXT NOT NULL,
            mmol_l REAL NOT NULL,
            patient_id TEXT,
            session_id TEXT,
            sample_type TEXT,
            sample_location TEXT,
            meal TEXT,
            control_solution INTEGER NOT NULL DEFAULT 0,
            flags TEXT NOT NULL DEFAULT '[]',
            stored_at TEXT NOT NULL,
            message_id TEXT NOT NULL
        );
        CREATE INDEX readings_meter_seq ON readings (meter_id, sequence);
        CREATE INDEX readings_session ON readings (session_id);
        CREATE TABLE captures (
            capture_id TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            media_type TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            eye TEXT NOT NULL,
            field TEXT NOT NULL,
            source TEXT NOT NULL,
            captured_at TEXT NOT NULL,
            patient_id TEXT,
            session_id TEXT,
            operator TEXT,
            quality_ok INTEGER NOT NULL,
            quality_reasons TEXT NOT NULL DEFAULT '[]',
            quality_metrics TEXT NOT NULL DEFAULT '{}',
            referable_probability REAL,
            decision TEXT,
            model_version TEXT,
            thresholds TEXT NOT NULL DEFAULT '{}',
            image_path TEXT NOT NULL,
            stored_at TEXT NOT NULL,
            message_id TEXT NOT NULL
        );
        CREATE INDEX captures_sha ON captures (sha256);
        -- Outbox row lifecycle (see outbox.TRANSITIONS): pending -> sent -> acked; sent -> pending on
        -- timeout or restart; pending|sent -> parked when the broker refuses the message; parked -> pending.
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB,
            body_ref TEXT,
            properties TEXT NOT NULL DEFAULT '{}',
            record_ref TEXT,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'sent', 'acked', 'parked')),
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            acked_at TEXT,
            parked_reason TEXT,
            CHECK (payload IS NOT NULL OR body_ref IS NOT NULL)
        );
        CREATE INDEX outbox_state_seq ON outbox (state, seq);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target_kind TEXT,
            target_id TEXT,
            patient_id TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        -- Operational events (no patient data): recent errors on the status page, the events topic.
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            level TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE referrals (
            referral_id TEXT PRIMARY KEY,
            capture_id TEXT,
            patient_id TEXT,
            decision TEXT NOT NULL,
            note TEXT,
            grader TEXT,
            decided_at TEXT,
            received_at TEXT NOT NULL,
            seen_at TEXT
        );
        CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('nurse', 'technician', 'it', 'admin')),
            language TEXT,
            created_at TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE meter_patients (
            meter_id TEXT PRIMARY KEY,
            patient_id TEXT NOT NULL,
            linked_by TEXT NOT NULL,
            linked_at TEXT NOT NULL
        );
        CREATE TABLE kv (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        """
    )


@MIGRATIONS(name="0002_retina_folder_ledger")
def _retina_folder_ledger(db: Database) -> None:
    # Files taken from a fundus camera's export folder: each (name, content) once, across restarts.
    db.executescript(
        """
        CREATE TABLE retina_folder_files (
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            outcome TEXT NOT NULL,          -- 'stored', 'duplicate' or 'refused: <reason>'
            capture_id TEXT,
            taken_at TEXT NOT NULL,
            PRIMARY KEY (name, sha256)
        );
        """
    )


@MIGRATIONS(name="0003_web_queue_samples_login_failures")
def _web_samples_and_logins(db: Database) -> None:
    # Outbox depth over time for the status page's chart (no patient data), and failed logins for the
    # per-IP+user rate limit (kept in the store so a daemon restart does not reset the lockout).
    db.executescript(
        """
        CREATE TABLE web_queue_samples (
            at TEXT NOT NULL,
            unsent INTEGER NOT NULL,
            parked INTEGER NOT NULL,
            acked_total INTEGER NOT NULL
        );
        CREATE INDEX web_queue_samples_at ON web_queue_samples (at);
        CREATE TABLE web_login_failures (
            key TEXT NOT NULL,
            at TEXT NOT NULL
        );
        CREATE INDEX web_login_failures_key_at ON web_login_failures (key, at);
        """
    )


@MIGRATIONS(name="0004_meter_resume_identity")
def _meter_resume_identity(db: Database) -> None:
    # Meters without record numbers that are read newest first (OneTouch UltraEasy): the identity of the
    # newest record of the last download that ran to the end. The next download stops when it reaches it.
    # Only complete downloads move it, so a download cut short is read again past its gap next time.
    db.execute("ALTER TABLE meters ADD COLUMN resume_identity TEXT")


@MIGRATIONS(name="0005_downlink_dead_letters")
def _downlink_dead_letters(db: Database) -> None:
    # Downlink messages (acks, referral decisions) that failed the contract: kept with the reason for IT,
    # never logged. The payload is kept bounded (store/dead_letters.py), only here, where patient data is
    # allowed. One row per distinct (topic, payload): the broker redelivers what we had not acknowledged.
    # And referrals held for review: a decision naming a photo of one patient and the id of another is
    # stored but not shown as either patient's (held_reason says why).
    db.executescript(
        """
        CREATE TABLE downlink_dead_letters (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            topic TEXT NOT NULL,
            what TEXT NOT NULL,
            field TEXT NOT NULL,
            reason TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            payload BLOB NOT NULL,
            payload_sha256 TEXT NOT NULL,
            UNIQUE (topic, payload_sha256)
        );
        ALTER TABLE referrals ADD COLUMN held_reason TEXT;
        """
    )


@MIGRATIONS(name="0006_web_sessions_login_limits")
def _web_sessions_login_limits(db: Database) -> None:
    # Server-side desk sessions (keyed by a digest of the cookie's token: logout, a password change or a
    # disabled user delete the rows, which ends every copy of the cookie) and login attempts counted per
    # user name (a digest) and per client address, checked and recorded in one transaction. The old
    # failure counter keyed by address + name is replaced by the attempts table; it is dropped first so
    # its pages are reused (a small table of sessions needs no index besides its key).
    db.executescript(
        """
        DROP TABLE web_login_failures;
        CREATE TABLE web_sessions (
            token_sha256 TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            address TEXT
        ) WITHOUT ROWID;
        CREATE TABLE web_login_attempts (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('user', 'address')),
            key TEXT NOT NULL,
            at TEXT NOT NULL
        );
        CREATE INDEX web_login_attempts_scope_key_at ON web_login_attempts (scope, key, at);
        """
    )


OUTBOX_COUNT_TRIGGERS = """
    CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox BEGIN
        INSERT INTO outbox_counts (kind, state, n) VALUES (new.kind, new.state, 1)
            ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_counts_update AFTER UPDATE OF state ON outbox WHEN old.state IS NOT new.state BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE kind = old.kind AND state = old.state;
        INSERT INTO outbox_counts (kind, state, n) VALUES (new.kind, new.state, 1)
            ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE kind = old.kind AND state = old.state;
    END;
"""
"""Keep ``outbox_counts`` equal to ``SELECT kind, state, count(*) FROM outbox GROUP BY kind, state`` in the
transaction of every write, whoever writes (the outbox, the prune, a restored backup's requeue)."""


@MIGRATIONS(name="0007_outbox_state_apart")
def _outbox_state_apart(db: Database) -> None:
    # Issue 17: the outbox's state apart from its payloads, and a store that stays quick at 10^6 readings.
    # - ``outbox`` keeps a message's identity and lifecycle (state, attempts, times): the narrow row that claim,
    #   ack, requeue and park rewrite. ``outbox_bodies`` keeps what is sent (topic, payload or body_ref,
    #   properties), written once by enqueue and never updated; the prune deletes the bodies of acked messages
    #   (nothing sends an acked message again), so those of already acked messages are not copied here.
    # - A glucose message's record is found by ``readings.message_id``: its ``record_ref`` ('reading:<id>') is
    #   dropped. Event messages name their events row ('event:<id>', 'event:' for older ones), so that every
    #   message without a reading has a record_ref and the partial index finds them without the readings'.
    # - ``outbox_counts``: the counts per (kind, state), maintained by triggers (the status page and the queue
    #   sampler read a few rows instead of scanning every message ever sent).
    # - ``readings_stored_at``: the prune finds readings past retention without reading every reading.
    # ``seq`` keeps its values, and AUTOINCREMENT's high-water mark survives the table's re-creation (a message
    # pruned earlier never has its seq handed out again).
    high_water = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    db.executescript(
        """
        CREATE TABLE outbox_bodies (
            seq INTEGER PRIMARY KEY,            -- outbox.seq of the message
            topic TEXT NOT NULL,
            payload BLOB,
            body_ref TEXT,
            properties TEXT NOT NULL DEFAULT '{}',
            CHECK (payload IS NOT NULL OR body_ref IS NOT NULL)
        );
        INSERT INTO outbox_bodies (seq, topic, payload, body_ref, properties)
            SELECT seq, topic, payload, body_ref, properties FROM outbox WHERE state != 'acked';
        -- Outbox row lifecycle (see outbox.TRANSITIONS): pending -> sent -> acked; sent -> pending on
        -- timeout or restart; pending|sent -> parked when the broker refuses the message; parked -> pending.
        CREATE TABLE outbox_next (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            record_ref TEXT,                    -- 'capture:<id>' (capture and its image chunks), 'event:<id>'
            created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'sent', 'acked', 'parked')),
            attempts INTEGER NOT NULL DEFAULT 0,
            sent_at TEXT,
            acked_at TEXT,
            parked_reason TEXT
        );
        INSERT INTO outbox_next (seq, message_id, kind, record_ref, created_at, state, attempts, sent_at, acked_at,
                                 parked_reason)
            SELECT seq, message_id, kind,
                   CASE kind WHEN 'glucose' THEN NULL WHEN 'event' THEN coalesce(record_ref, 'event:')
                        ELSE record_ref END,
                   created_at, state, attempts, sent_at, acked_at, parked_reason
            FROM outbox ORDER BY seq;
        DROP TABLE outbox;
        ALTER TABLE outbox_next RENAME TO outbox;
        CREATE INDEX outbox_state_seq ON outbox (state, seq);
        CREATE INDEX outbox_records ON outbox (record_ref) WHERE record_ref IS NOT NULL;
        CREATE TABLE outbox_counts (
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (kind, state)
        ) WITHOUT ROWID;
        INSERT INTO outbox_counts (kind, state, n) SELECT kind, state, count(*) FROM outbox GROUP BY kind, state;
        CREATE INDEX readings_stored_at ON readings (stored_at);
        """
    )
    db.executescript(OUTBOX_COUNT_TRIGGERS)
    if high_water is not None:
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'outbox'", [high_water[0]])


@MIGRATIONS(name="0008_quality_control_results")
def _quality_control_results(db: Database) -> None:
    # Issue 16: a meter's control-solution tests are quality control of the meter, never a patient's glucose.
    # - ``qc_results`` keeps them (no patient column at all); their messages are cg.qc/1 on the ``qc`` topic.
    # - Rows a download stored in ``readings`` with control_solution = 1 MOVE here: no patient view or statistic
    #   can then show them, whatever query it runs. Their glucose message:
    #   * acked: the platform already has it (as a reading: the old contract); the row keeps that message_id and
    #     sent_as_glucose = 1, so the desk can say so and the prune finds it like any confirmed record;
    #   * not acked (pending, sent, parked): deleted unsent, so it never reaches the platform as the patient's
    #     glucose; message_id is left NULL and the store queues the row's cg.qc/1 message when it opens
    #     (store/qc.py, queue_withheld: the payload needs the site's identity, which a migration has not got).
    # - ``readings`` gains the coded GLS context that used to travel as flag names (tester, health), and a trigger
    #   that refuses any control-solution row, so nothing can put one back among the patient's readings.
    db.executescript(
        """
        CREATE TABLE qc_results (
            id INTEGER PRIMARY KEY,
            qc_id TEXT NOT NULL UNIQUE,
            identity TEXT NOT NULL UNIQUE,      -- as readings.identity: (meter_id, sequence) or (meter_id, time, value)
            meter_id TEXT NOT NULL,
            sequence INTEGER,
            meter_time TEXT NOT NULL,
            clock_offset_s REAL NOT NULL,
            corrected_time TEXT NOT NULL,
            time_trusted INTEGER NOT NULL,
            value REAL NOT NULL,
            unit TEXT NOT NULL,
            mmol_l REAL NOT NULL,
            lot TEXT,
            outcome TEXT CHECK (outcome IN ('pass', 'fail')),
            session_id TEXT,
            flags TEXT NOT NULL DEFAULT '[]',
            stored_at TEXT NOT NULL,
            message_id TEXT UNIQUE,             -- NULL only until the store queues its cg.qc/1 message
            sent_as_glucose INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX qc_results_meter_time ON qc_results (meter_id, corrected_time);
        CREATE INDEX qc_results_session ON qc_results (session_id);
        CREATE INDEX qc_results_stored_at ON qc_results (stored_at);
        CREATE INDEX qc_results_unqueued ON qc_results (id) WHERE message_id IS NULL;

        CREATE TEMP TABLE control_messages AS
            SELECT o.seq, o.message_id, o.state FROM readings r JOIN outbox o ON o.message_id = r.message_id
            WHERE r.control_solution != 0;
        INSERT INTO qc_results (qc_id, identity, meter_id, sequence, meter_time, clock_offset_s, corrected_time,
                                time_trusted, value, unit, mmol_l, session_id, flags, stored_at, message_id,
                                sent_as_glucose)
            SELECT r.reading_id, r.identity, r.meter_id, r.sequence, r.meter_time, r.clock_offset_s,
                   r.corrected_time, r.time_trusted, r.value, r.unit, r.mmol_l, r.session_id, r.flags, r.stored_at,
                   CASE WHEN m.state = 'acked' THEN r.message_id END,
                   CASE WHEN m.state = 'acked' THEN 1 ELSE 0 END
            FROM readings r LEFT JOIN control_messages m ON m.message_id = r.message_id
            WHERE r.control_solution != 0 ORDER BY r.id;
        DELETE FROM outbox_bodies WHERE seq IN (SELECT seq FROM control_messages WHERE state != 'acked');
        DELETE FROM outbox WHERE seq IN (SELECT seq FROM control_messages WHERE state != 'acked');
        DELETE FROM readings WHERE control_solution != 0;
        DROP TABLE control_messages;

        ALTER TABLE readings ADD COLUMN tester TEXT;
        ALTER TABLE readings ADD COLUMN health TEXT;
        CREATE TRIGGER readings_never_control_solution BEFORE INSERT ON readings WHEN new.control_solution != 0
        BEGIN
            SELECT RAISE(ABORT, 'a control-solution result is quality control: it belongs in qc_results');
        END;
        """
    )


@MIGRATIONS(name="0009_blood_pressure")
def _blood_pressure(db: Database) -> None:
    # Issue 13: blood pressure readings from Bluetooth cuffs, beside the glucose readings. Values as the cuff
    # reported them (mmHg or kPa) and in mmHg. Identity (store/blood_pressure.py): (cuff, user, sequence) for
    # cuffs that number their stored records, else (cuff, user, time, values); UNIQUE, as for readings, so a
    # second download of the same cuff adds nothing. The cuff's meter row lives in ``meters`` (family 'bps').
    db.executescript(
        """
        CREATE TABLE blood_pressure (
            id INTEGER PRIMARY KEY,
            reading_id TEXT NOT NULL UNIQUE,
            identity TEXT NOT NULL UNIQUE,
            meter_id TEXT NOT NULL,
            sequence INTEGER,
            cuff_user INTEGER,                  -- the cuff's user id (multi-user cuffs); NULL: not said
            meter_time TEXT,                    -- the cuff's clock; NULL when it sent no time stamp
            clock_offset_s REAL NOT NULL,
            corrected_time TEXT NOT NULL,
            time_trusted INTEGER NOT NULL,
            systolic REAL NOT NULL,
            diastolic REAL NOT NULL,
            mean_arterial REAL,
            unit TEXT NOT NULL CHECK (unit IN ('mmHg', 'kPa')),
            systolic_mmhg REAL NOT NULL,
            diastolic_mmhg REAL NOT NULL,
            mean_arterial_mmhg REAL,
            pulse_bpm REAL,
            status TEXT NOT NULL DEFAULT '[]',  -- what the cuff said: irregular_pulse, body_movement, ...
            patient_id TEXT,
            session_id TEXT,
            flags TEXT NOT NULL DEFAULT '[]',
            stored_at TEXT NOT NULL,
            message_id TEXT NOT NULL
        );
        CREATE INDEX blood_pressure_meter_user_seq ON blood_pressure (meter_id, cuff_user, sequence);
        CREATE INDEX blood_pressure_session ON blood_pressure (session_id);
        CREATE INDEX blood_pressure_stored_at ON blood_pressure (stored_at);
        """
    )


@MIGRATIONS(name="0010_outbox_unacked_index")
def _outbox_unacked_index(db: Database) -> None:
    # Issue 17: the state index holds only the messages not yet acked (a few thousand, however long the history),
    # not the million acked ones. The claim walks a small tree, an ack deletes its row's entry and inserts none,
    # and the database is ~20 bytes a reading smaller. SQLite uses a partial index only for a query whose WHERE
    # repeats the index's condition: the outbox's queries on the state say ``state != 'acked'``
    # (:data:`gateway.store.outbox.UNACKED`).
    db.executescript(
        """
        DROP INDEX outbox_state_seq;
        CREATE INDEX outbox_unacked ON outbox (state, seq) WHERE state != 'acked';
        """
    )


@MIGRATIONS(name="0011_outbox_sent_in_memory")
def _outbox_sent_in_memory(db: Database) -> None:
    # Issue 17: "in flight" lives in the forwarder's memory; a claim writes no message row (see
    # gateway.store.outbox). Rows still 'sent' go back to 'pending' (they went out again at every start anyway),
    # and the ack guard's evidence moves from each row's sent_at to one mark, the highest seq sent: claims went in
    # seq order, so every message at or below the highest sent one went out (or was parked). The columns 'sent_at'
    # and the state 'sent' stay in the schema, unused (dropping a column rebuilds the table).
    db.execute(
        "INSERT INTO kv (key, value, updated_at) "
        "SELECT 'outbox_sent_through', CAST(max(seq) AS TEXT), max(sent_at) FROM outbox "
        "WHERE sent_at IS NOT NULL HAVING max(seq) IS NOT NULL "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
    )
    db.execute("UPDATE outbox SET state = 'pending' WHERE state = 'sent' AND state != 'acked'")


@MIGRATIONS(name="0012_readings_by_patient")
def _readings_by_patient(db: Database) -> None:
    # A patient's readings are read by the nurse's visit picture (since the last visit) and by the referral
    # check "was this patient ever here": both scanned every reading (10^6 in a year of a busy clinic: about a
    # quarter of a second here, several times that on a Pi). ~45 bytes a reading.
    db.execute("CREATE INDEX readings_patient_time ON readings (patient_id, corrected_time)")


@MIGRATIONS(name="0013_blood_pressure_unassigned")
def _blood_pressure_unassigned(db: Database) -> None:
    # The nurse's desk lists the blood pressure readings without a patient (a shared cuff's other users) per cuff
    # user, on every visit to the page; they are few, the table is a year of every patient's: an index of those
    # only (the query says ``patient_id IS NULL`` too, so SQLite uses it).
    db.execute(
        "CREATE INDEX blood_pressure_unassigned ON blood_pressure (meter_id, cuff_user, id) WHERE patient_id IS NULL"
    )
