//! Everything that must survive a restart, in one SQLite database under the data
//! directory: the served domain, accounts (HA1 values only), rooms and registrations.
//!
//! The schema is versioned; [`Store::open`] applies the migrations a database lacks in
//! one transaction, so an old data directory upgrades in place and a failed upgrade
//! leaves it untouched. WAL mode lets the CLI change accounts and rooms while the node
//! runs; the node reads them per request, so such changes apply without a restart.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: domain, accounts, rooms, bindings.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE accounts (
         name TEXT PRIMARY KEY,
         ha1_md5 TEXT NOT NULL,
         ha1_sha256 TEXT NOT NULL,
         created_unix INTEGER NOT NULL);
     CREATE TABLE rooms (
         name TEXT PRIMARY KEY,
         pin TEXT,
         max_legs INTEGER NOT NULL,
         created_unix INTEGER NOT NULL);
     CREATE TABLE bindings (
         aor TEXT NOT NULL,
         contact TEXT NOT NULL,
         expires_unix INTEGER NOT NULL,
         q REAL NOT NULL,
         call_id TEXT NOT NULL,
         cseq INTEGER NOT NULL,
         transport TEXT NOT NULL,
         remote TEXT NOT NULL,
         instance TEXT,
         PRIMARY KEY (aor, contact));",
    // 2: the web admin's password hash and API tokens.
    "CREATE TABLE admin (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE api_tokens (
         id TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         hash TEXT NOT NULL,
         created_unix INTEGER NOT NULL);",
];

/// Names that can never be an account or a room.
pub const RESERVED_NAMES: &[&str] = &["voicemail"];

/// A SIP account: its name and the digest HA1 values for the node's realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user part of the AOR.
    pub name: String,
    /// MD5(name:realm:password), hex.
    pub ha1_md5: String,
    /// SHA-256(name:realm:password), hex.
    pub ha1_sha256: String,
}

impl Account {
    /// The account for `name` in `realm` (the domain) with this password: only the
    /// HA1 values are kept.
    pub fn with_password(name: &str, realm: &str, password: &str) -> Self {
        use crate::sip::digest::{ha1, Algorithm};
        Account {
            name: name.to_string(),
            ha1_md5: ha1(Algorithm::Md5, name, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, name, realm, password),
        }
    }
}

/// A conference room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The user part of the room's URI.
    pub name: String,
    /// Digits a caller must send before joining, if any.
    pub pin: Option<String>,
    /// Most participants.
    pub max_legs: u32,
}

/// One registered contact as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBinding {
    /// Canonical AOR (`user@domain`).
    pub aor: String,
    /// The Contact URI.
    pub contact: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_unix: i64,
    /// Contact q-value.
    pub q: f32,
    /// Call-ID of the REGISTER that created or last refreshed it.
    pub call_id: String,
    /// Its CSeq number.
    pub cseq: u32,
    /// Transport of the flow it arrived on (`udp`, `tcp`).
    pub transport: String,
    /// Source address of that flow.
    pub remote: String,
    /// `+sip.instance` (RFC 5626), if given.
    pub instance: Option<String>,
}

/// The database handle.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks a user or room name: the user part of a SIP URI we are willing to serve.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'+".contains(c));
    if !ok {
        return Err(Error::InvalidName(name.to_string()));
    }
    if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(Error::ReservedName(name.to_string()));
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) `DIR/supernode.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::DataDir {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let path = dir.join("supernode.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(Error::SchemaTooNew {
                found: version,
                known: MIGRATIONS.len() as i64,
            });
        }
        let tx = self.conn.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Records the domain on first use; afterwards refuses another one, since the
    /// stored HA1 values are bound to it as the digest realm.
    pub fn claim_domain(&self, domain: &str) -> Result<()> {
        match self.domain()? {
            Some(d) if d.eq_ignore_ascii_case(domain) => Ok(()),
            Some(d) => Err(Error::DomainMismatch {
                stored: d,
                asked: domain.to_string(),
            }),
            None => {
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('domain', ?1)",
                    params![domain.to_ascii_lowercase()],
                )?;
                Ok(())
            }
        }
    }

    /// The domain recorded on first use, if any.
    pub fn domain(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'domain'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Adds an account, or replaces its password.
    pub fn put_account(&self, account: &Account) -> Result<()> {
        check_name(&account.name)?;
        if self.room(&account.name)?.is_some() {
            return Err(Error::NameTaken(account.name.clone()));
        }
        self.conn.execute(
            "INSERT INTO accounts (name, ha1_md5, ha1_sha256, created_unix) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256",
            params![account.name, account.ha1_md5, account.ha1_sha256, now_unix()],
        )?;
        Ok(())
    }

    /// Looks an account up by name.
    pub fn account(&self, name: &str) -> Result<Option<Account>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, ha1_md5, ha1_sha256 FROM accounts WHERE name = ?1")?;
        Ok(stmt
            .query_row(params![name], |r| {
                Ok(Account {
                    name: r.get(0)?,
                    ha1_md5: r.get(1)?,
                    ha1_sha256: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Deletes an account and its registrations; false if there was none.
    pub fn delete_account(&self, name: &str, domain: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM accounts WHERE name = ?1", params![name])?;
        self.conn.execute(
            "DELETE FROM bindings WHERE aor = ?1",
            params![format!("{name}@{domain}")],
        )?;
        Ok(n > 0)
    }

    /// All account names, sorted.
    pub fn account_names(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM accounts ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }

    /// Adds a room, or updates its PIN and size.
    pub fn put_room(&self, room: &RoomRecord) -> Result<()> {
        check_name(&room.name)?;
        if self.account(&room.name)?.is_some() {
            return Err(Error::NameTaken(room.name.clone()));
        }
        if let Some(pin) = &room.pin {
            if pin.is_empty() || pin.len() > 16 || !pin.chars().all(|c| c.is_ascii_digit()) {
                return Err(Error::InvalidPin);
            }
        }
        if room.max_legs == 0 {
            return Err(Error::InvalidRoomSize);
        }
        self.conn.execute(
            "INSERT INTO rooms (name, pin, max_legs, created_unix) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET pin = excluded.pin, max_legs = excluded.max_legs",
            params![room.name, room.pin, room.max_legs, now_unix()],
        )?;
        Ok(())
    }

    /// Looks a room up by name.
    pub fn room(&self, name: &str) -> Result<Option<RoomRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, pin, max_legs FROM rooms WHERE name = ?1")?;
        Ok(stmt
            .query_row(params![name], |r| {
                Ok(RoomRecord {
                    name: r.get(0)?,
                    pin: r.get(1)?,
                    max_legs: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Deletes a room; false if there was none.
    pub fn delete_room(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM rooms WHERE name = ?1", params![name])?
            > 0)
    }

    /// All rooms, sorted by name.
    pub fn rooms(&self) -> Result<Vec<RoomRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, pin, max_legs FROM rooms ORDER BY name")?;
        let rooms = stmt
            .query_map([], |r| {
                Ok(RoomRecord {
                    name: r.get(0)?,
                    pin: r.get(1)?,
                    max_legs: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rooms)
    }

    /// A value of the admin's settings (`password_hash`), if set.
    pub fn admin_value(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM admin WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a value of the admin's settings.
    pub fn set_admin_value(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO admin (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Every API token of the admin as (id, name, hash, created_unix), oldest first.
    pub fn api_tokens(&self) -> Result<Vec<(String, String, String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, hash, created_unix FROM api_tokens ORDER BY created_unix, id",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stores an API token (only its hash).
    pub fn add_api_token(&self, id: &str, name: &str, hash: &str, created_unix: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO api_tokens (id, name, hash, created_unix) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, hash, created_unix],
        )?;
        Ok(())
    }

    /// Revokes an API token; false if there was none.
    pub fn delete_api_token(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM api_tokens WHERE id = ?1", params![id])?
            > 0)
    }

    /// Applies a batch of binding changes in one transaction (the registrar writes
    /// behind, so a burst of REGISTERs costs one commit, not one each).
    pub fn apply_bindings(
        &mut self,
        upserts: &[StoredBinding],
        removals: &[(String, String)],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO bindings (aor, contact, expires_unix, q, call_id, cseq, transport, remote, instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(aor, contact) DO UPDATE SET expires_unix = excluded.expires_unix, q = excluded.q,
                   call_id = excluded.call_id, cseq = excluded.cseq, transport = excluded.transport,
                   remote = excluded.remote, instance = excluded.instance",
            )?;
            for b in upserts {
                put.execute(params![
                    b.aor,
                    b.contact,
                    b.expires_unix,
                    f64::from(b.q),
                    b.call_id,
                    b.cseq,
                    b.transport,
                    b.remote,
                    b.instance
                ])?;
            }
            let mut del =
                tx.prepare_cached("DELETE FROM bindings WHERE aor = ?1 AND contact = ?2")?;
            for (aor, contact) in removals {
                del.execute(params![aor, contact])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every binding that has not expired at `now_unix`, for the registrar to load at
    /// start; expired ones are deleted.
    pub fn live_bindings(&self, now_unix: i64) -> Result<Vec<StoredBinding>> {
        self.conn.execute(
            "DELETE FROM bindings WHERE expires_unix <= ?1",
            params![now_unix],
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT aor, contact, expires_unix, q, call_id, cseq, transport, remote, instance FROM bindings",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredBinding {
                    aor: r.get(0)?,
                    contact: r.get(1)?,
                    expires_unix: r.get(2)?,
                    q: r.get::<_, f64>(3)? as f32,
                    call_id: r.get(4)?,
                    cseq: r.get(5)?,
                    transport: r.get(6)?,
                    remote: r.get(7)?,
                    instance: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn migrations_run_once_and_reopen_is_idempotent() {
        let (dir, store) = temp();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (dir, store) = temp();
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn the_domain_is_fixed_on_first_use() {
        let (_d, store) = temp();
        store.claim_domain("Example.org").unwrap();
        store.claim_domain("example.org").unwrap();
        assert!(matches!(
            store.claim_domain("other.org"),
            Err(Error::DomainMismatch { .. })
        ));
    }

    #[test]
    fn users_and_rooms_share_one_namespace() {
        let (_d, store) = temp();
        let acct = Account {
            name: "alice".into(),
            ha1_md5: "a".into(),
            ha1_sha256: "b".into(),
        };
        store.put_account(&acct).unwrap();
        let room = RoomRecord {
            name: "alice".into(),
            pin: None,
            max_legs: 10,
        };
        assert!(matches!(store.put_room(&room), Err(Error::NameTaken(_))));
        assert!(matches!(
            store.put_account(&Account {
                name: "voicemail".into(),
                ..acct.clone()
            }),
            Err(Error::ReservedName(_))
        ));
        assert!(matches!(
            store.put_account(&Account {
                name: "bad name".into(),
                ..acct
            }),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            store.put_room(&RoomRecord {
                name: "r".into(),
                pin: Some("12a".into()),
                max_legs: 3
            }),
            Err(Error::InvalidPin)
        ));
    }

    #[test]
    fn admin_settings_and_tokens_round_trip() {
        let (_d, store) = temp();
        assert_eq!(store.admin_value("password_hash").unwrap(), None);
        store.set_admin_value("password_hash", "a").unwrap();
        store.set_admin_value("password_hash", "b").unwrap();
        assert_eq!(
            store.admin_value("password_hash").unwrap().as_deref(),
            Some("b")
        );
        store.add_api_token("t1", "ci", "h", 5).unwrap();
        assert_eq!(
            store.api_tokens().unwrap(),
            vec![("t1".into(), "ci".into(), "h".into(), 5)]
        );
        assert!(store.delete_api_token("t1").unwrap());
        assert!(!store.delete_api_token("t1").unwrap());
    }

    #[test]
    fn bindings_round_trip_and_expire() {
        let (_d, mut store) = temp();
        let b = StoredBinding {
            aor: "alice@example.org".into(),
            contact: "<sip:alice@127.0.0.1:5090>".into(),
            expires_unix: 2_000,
            q: 0.5,
            call_id: "c".into(),
            cseq: 7,
            transport: "udp".into(),
            remote: "127.0.0.1:5090".into(),
            instance: None,
        };
        let old = StoredBinding {
            contact: "<sip:alice@127.0.0.1:5091>".into(),
            expires_unix: 500,
            ..b.clone()
        };
        store.apply_bindings(&[b.clone(), old], &[]).unwrap();
        assert_eq!(store.live_bindings(1_000).unwrap(), vec![b.clone()]);
        store
            .apply_bindings(&[], &[(b.aor.clone(), b.contact.clone())])
            .unwrap();
        assert!(store.live_bindings(1_000).unwrap().is_empty());
    }
}
