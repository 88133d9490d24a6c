//! Secret-read audit entries on their way through the shared-memory queue (pure part):
//! the fixed-size entry, what of a request's headers is recorded, and the ring's
//! arithmetic. The queue itself is `src/audit_pg.rs`.
//!
//! An entry carries exactly what `api_key_mgmt_internal.audit()` would have written in
//! the reading transaction; a value that does not fit its field is never truncated:
//! the entry is refused and the read is audited synchronously instead.

use serde_json::Value;

/// Longest user agent kept, in characters (as `left(user_agent, 300)` in SQL).
pub const USER_AGENT_CHARS: usize = 300;

/// A text field of at most `N` bytes, or NULL.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Field<const N: usize> {
    /// Length in bytes; `u16::MAX` for NULL.
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> Field<N> {
    pub const NULL: Self = Field {
        len: u16::MAX,
        bytes: [0; N],
    };

    /// `None` when the text is longer than `N` bytes.
    pub fn new(value: Option<&str>) -> Option<Self> {
        let Some(v) = value else {
            return Some(Self::NULL);
        };
        if v.len() > N || v.len() >= u16::MAX as usize {
            return None;
        }
        let mut f = Field {
            len: v.len() as u16,
            bytes: [0; N],
        };
        f.bytes[..v.len()].copy_from_slice(v.as_bytes());
        Some(f)
    }

    pub fn get(&self) -> Option<&str> {
        if self.len == u16::MAX {
            return None;
        }
        // Written from a &str by `new`, so always UTF-8; never trust shared memory blindly.
        std::str::from_utf8(self.bytes.get(..self.len as usize)?).ok()
    }
}

/// Where a resolved secret came from (`resolve_provider_key`'s `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Source {
    Model = 1,
    Tenant = 2,
    Platform = 3,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Model => "model",
            Source::Tenant => "tenant",
            Source::Platform => "platform",
        }
    }

    fn from_u8(v: u8) -> Option<Source> {
        match v {
            1 => Some(Source::Model),
            2 => Some(Source::Tenant),
            3 => Some(Source::Platform),
            _ => None,
        }
    }
}

/// One `secret.decrypted` audit entry, plain bytes (it lives in shared memory).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Entry {
    /// The database of the read (only the worker connected to it may write it).
    pub database: u32,
    source: u8,
    has_tenant: bool,
    /// When the secret was read (Postgres `TimestampTz`, microseconds since 2000).
    pub occurred_at: i64,
    /// Who to wake once the entry is committed (an opaque handle the reader gives,
    /// its latch; 0: no one waits).
    pub waiter: u64,
    tenant: [u8; 16],
    secret: [u8; 16],
    provider: Field<64>,
    scope: Field<200>,
    actor: Field<256>,
    actor_role: Field<64>,
    client_ip: Field<256>,
    user_agent: Field<1200>,
}

/// What a read records, borrowed from the reading backend.
pub struct Read<'a> {
    pub database: u32,
    pub occurred_at: i64,
    pub tenant: Option<[u8; 16]>,
    pub secret: [u8; 16],
    pub provider: &'a str,
    pub source: Source,
    pub scope: &'a str,
    pub actor: &'a str,
    pub actor_role: &'a str,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

impl Entry {
    /// `None` when a value does not fit (the caller audits synchronously instead).
    pub fn new(r: &Read) -> Option<Entry> {
        Some(Entry {
            database: r.database,
            waiter: 0,
            source: r.source as u8,
            has_tenant: r.tenant.is_some(),
            occurred_at: r.occurred_at,
            tenant: r.tenant.unwrap_or([0; 16]),
            secret: r.secret,
            provider: Field::new(Some(r.provider))?,
            scope: Field::new(Some(r.scope))?,
            actor: Field::new(Some(r.actor))?,
            actor_role: Field::new(Some(r.actor_role))?,
            client_ip: Field::new(r.client_ip)?,
            user_agent: Field::new(r.user_agent)?,
        })
    }

    pub fn tenant(&self) -> Option<[u8; 16]> {
        self.has_tenant.then_some(self.tenant)
    }
    pub fn secret(&self) -> [u8; 16] {
        self.secret
    }
    pub fn source(&self) -> Option<Source> {
        Source::from_u8(self.source)
    }
    pub fn provider(&self) -> Option<&str> {
        self.provider.get()
    }
    pub fn scope(&self) -> Option<&str> {
        self.scope.get()
    }
    pub fn actor(&self) -> Option<&str> {
        self.actor.get()
    }
    pub fn actor_role(&self) -> Option<&str> {
        self.actor_role.get()
    }
    pub fn client_ip(&self) -> Option<&str> {
        self.client_ip.get()
    }
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.get()
    }
}

/// `headers ->> name` in SQL: a string as is, JSON null or absent as NULL, any other
/// value as its JSON text.
fn header(headers: &Value, name: &str) -> Option<String> {
    match headers.get(name)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// The client address: `btrim(split_part(coalesce(x-forwarded-for, x-real-ip), ',', 1))`.
pub fn client_ip(headers: &Value) -> Option<String> {
    let raw = header(headers, "x-forwarded-for").or_else(|| header(headers, "x-real-ip"))?;
    let first = raw.split(',').next().unwrap_or("");
    Some(first.trim_matches(' ').to_owned())
}

/// The user agent, cut to [`USER_AGENT_CHARS`] characters.
pub fn user_agent(headers: &Value) -> Option<String> {
    header(headers, "user-agent").map(|ua| ua.chars().take(USER_AGENT_CHARS).collect())
}

/// The `audit_log` columns a batch of entries is written to, in the order of the fields
/// of [`copy_binary`].
pub const COPY_COLUMNS: [&std::ffi::CStr; 11] = [
    c"id",
    c"occurred_at",
    c"tenant_id",
    c"actor",
    c"actor_role",
    c"action",
    c"target_type",
    c"target_id",
    c"details",
    c"client_ip",
    c"user_agent",
];

/// Entries as the rows `api_key_mgmt_internal.audit()` would have inserted for them, in
/// PostgreSQL's binary `COPY` format (header, one tuple per entry, trailer) for
/// [`COPY_COLUMNS`]: `id(entry)` as the id, action `secret.decrypted` on the secret,
/// and the provider, source and scope in `details` (jsonb, version 1).
pub fn copy_binary(entries: &[Entry], mut id: impl FnMut(&Entry) -> [u8; 16]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = Vec::with_capacity(32 + entries.len() * 320);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for e in entries {
        let details = serde_json::json!({
            "provider": e.provider(),
            "source": e.source().map(Source::as_str),
            "scope": e.scope(),
        });
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(details.to_string().as_bytes());
        out.extend_from_slice(&(COPY_COLUMNS.len() as i16).to_be_bytes());
        field(&mut out, Some(&id(e)));
        field(&mut out, Some(&e.occurred_at.to_be_bytes()));
        field(&mut out, e.tenant().as_ref().map(|t| &t[..]));
        field(&mut out, e.actor().map(str::as_bytes));
        field(&mut out, e.actor_role().map(str::as_bytes));
        field(&mut out, Some(b"secret.decrypted"));
        field(&mut out, Some(b"secret"));
        field(&mut out, Some(uuid_text(&e.secret).as_bytes()));
        field(&mut out, Some(&jsonb));
        field(&mut out, e.client_ip().map(str::as_bytes));
        field(&mut out, e.user_agent().map(str::as_bytes));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// A uuid as `uuid_out` writes it: lower-case hex, hyphens after 8, 12, 16 and 20 digits.
pub fn uuid_text(id: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// A version 7 UUID (RFC 9562): `unix_ms` in the first 48 bits, then the version, 12
/// random bits, the variant and 62 random bits. Audit entries get these as ids, so the
/// primary key grows at its right edge (and sorts by time) instead of at random places.
pub fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    id[6] = 0x70 | (random[0] & 0x0f);
    id[7] = random[1];
    id[8] = 0x80 | (random[2] & 0x3f);
    id[9..].copy_from_slice(&random[3..]);
    id
}

/// A random (version 4) UUID from 16 random bytes, as `gen_random_uuid()` makes.
pub fn uuid_v4(random: [u8; 16]) -> [u8; 16] {
    let mut id = random;
    id[6] = 0x40 | (id[6] & 0x0f);
    id[8] = 0x80 | (id[8] & 0x3f);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read<'a>(provider: &'a str, ua: Option<&'a str>) -> Read<'a> {
        Read {
            database: 5,
            occurred_at: 42,
            tenant: Some([7; 16]),
            secret: [9; 16],
            provider,
            source: Source::Tenant,
            scope: "agents:chat",
            actor: "user-1",
            actor_role: "api_key_mgmt_service",
            client_ip: Some("203.0.113.7"),
            user_agent: ua,
        }
    }

    #[test]
    fn entry_round_trip() {
        let e = Entry::new(&read("openai", None)).unwrap();
        assert_eq!(e.database, 5);
        assert_eq!(e.occurred_at, 42);
        assert_eq!(e.tenant(), Some([7; 16]));
        assert_eq!(e.secret(), [9; 16]);
        assert_eq!(e.provider(), Some("openai"));
        assert_eq!(e.source(), Some(Source::Tenant));
        assert_eq!(e.scope(), Some("agents:chat"));
        assert_eq!(e.actor(), Some("user-1"));
        assert_eq!(e.actor_role(), Some("api_key_mgmt_service"));
        assert_eq!(e.client_ip(), Some("203.0.113.7"));
        assert_eq!(e.user_agent(), None);
        let mut r = read("openai", Some(""));
        r.tenant = None;
        let e = Entry::new(&r).unwrap();
        assert_eq!(e.tenant(), None);
        assert_eq!(e.user_agent(), Some(""));
    }

    #[test]
    fn too_long_is_refused_not_cut() {
        let long = "p".repeat(65);
        assert!(Entry::new(&read(&long, None)).is_none());
        let ua = "é".repeat(USER_AGENT_CHARS); // 600 bytes: fits
        assert!(Entry::new(&read("openai", Some(&ua))).is_some());
        let ua = "😀".repeat(USER_AGENT_CHARS + 1); // 1204 bytes: does not
        assert!(Entry::new(&read("openai", Some(&ua))).is_none());
        assert_eq!(Field::<4>::new(Some("abcd")).unwrap().get(), Some("abcd"));
        assert!(Field::<4>::new(Some("abcde")).is_none());
    }

    #[test]
    fn headers_like_sql() {
        let h = json!({"x-forwarded-for": " 203.0.113.7 , 10.0.0.1", "x-real-ip": "10.9.9.9",
                       "user-agent": "a".repeat(400)});
        assert_eq!(client_ip(&h).as_deref(), Some("203.0.113.7"));
        assert_eq!(user_agent(&h).map(|u| u.len()), Some(USER_AGENT_CHARS));
        let h = json!({"x-real-ip": "10.9.9.9"});
        assert_eq!(client_ip(&h).as_deref(), Some("10.9.9.9"));
        assert_eq!(user_agent(&h), None);
        let h = json!({"x-forwarded-for": null, "x-real-ip": 17, "user-agent": null});
        assert_eq!(client_ip(&h).as_deref(), Some("17"));
        assert_eq!(user_agent(&h), None);
        assert_eq!(client_ip(&json!({})), None);
    }

    #[test]
    fn entry_size_is_documented() {
        // README, Settings: api_key_mgmt.audit_queue_size.
        assert_eq!(std::mem::size_of::<Entry>(), 2112);
    }

    #[test]
    fn uuid_text_like_uuid_out() {
        let id = [
            0x01, 0x90, 0x12, 0x34, 0x56, 0x78, 0x7a, 0xbc, 0x8d, 0xef, 0, 1, 2, 3, 4, 0xff,
        ];
        assert_eq!(uuid_text(&id), "01901234-5678-7abc-8def-0001020304ff");
        assert_eq!(uuid_text(&[0; 16]), "00000000-0000-0000-0000-000000000000");
    }

    /// Split binary COPY data back into tuples of fields (`None`: NULL).
    fn parse_copy(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
        assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0", "signature");
        assert_eq!(&data[11..19], &[0; 8], "no flags, no header extension");
        let mut at = 19;
        let mut take = |n: usize| {
            let s = &data[at..at + n];
            at += n;
            s.to_vec()
        };
        let mut tuples = vec![];
        loop {
            let count = i16::from_be_bytes(take(2).try_into().unwrap());
            if count == -1 {
                break;
            }
            let fields = (0..count)
                .map(|_| {
                    let len = i32::from_be_bytes(take(4).try_into().unwrap());
                    (len >= 0).then(|| take(len as usize))
                })
                .collect();
            tuples.push(fields);
        }
        assert_eq!(at, data.len(), "nothing after the trailer");
        tuples
    }

    #[test]
    fn copy_rows_like_the_audit_function() {
        let a = Entry::new(&read("openai", Some("curl/8"))).unwrap();
        let mut r = read("anthropic", None);
        r.tenant = None;
        r.client_ip = None;
        r.source = Source::Platform;
        r.scope = "voice:\"tts\"";
        let b = Entry::new(&r).unwrap();
        let mut n = 0u8;
        let data = copy_binary(&[a, b], |_| {
            n += 1;
            [n; 16]
        });
        let rows = parse_copy(&data);
        assert_eq!(rows.len(), 2);
        let text = |s: &str| Some(s.as_bytes().to_vec());
        let jsonb = |s: &str| Some([&[1u8][..], s.as_bytes()].concat());
        assert_eq!(
            rows[0],
            vec![
                Some(vec![1; 16]),
                Some(42i64.to_be_bytes().to_vec()),
                Some(vec![7; 16]),
                text("user-1"),
                text("api_key_mgmt_service"),
                text("secret.decrypted"),
                text("secret"),
                text("09090909-0909-0909-0909-090909090909"),
                jsonb(r#"{"provider":"openai","scope":"agents:chat","source":"tenant"}"#),
                text("203.0.113.7"),
                text("curl/8"),
            ]
        );
        assert_eq!(rows[1][0], Some(vec![2; 16]));
        assert_eq!(rows[1][2], None, "a platform secret has no tenant");
        assert_eq!(
            rows[1][8],
            jsonb(r#"{"provider":"anthropic","scope":"voice:\"tts\"","source":"platform"}"#)
        );
        assert_eq!((&rows[1][9], &rows[1][10]), (&None, &None));
        assert_eq!(rows[0].len(), COPY_COLUMNS.len());
        assert_eq!(parse_copy(&copy_binary(&[], |_| [0; 16])).len(), 0);
    }

    #[test]
    fn uuid_v4_layout() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!((id[6], id[8]), (0x4f, 0xbf), "version 4, variant 10");
        let zero = uuid_v4([0; 16]);
        assert_eq!((zero[6], zero[8]), (0x40, 0x80));
        assert_eq!(&zero[..6], &[0; 6]);
        assert_eq!(&id[9..], &[0xff; 7]);
    }

    #[test]
    fn uuid_v7_layout() {
        let ms = 0x0190_1234_5678u64;
        let id = uuid_v7(ms, [0xff; 10]);
        assert_eq!(&id[..6], &[0x01, 0x90, 0x12, 0x34, 0x56, 0x78]);
        assert_eq!(id[6], 0x7f, "version 7 and 4 random bits");
        assert_eq!(id[8], 0xbf, "variant 10 and 6 random bits");
        assert_eq!(&id[9..], &[0xff; 7]);
        let zero = uuid_v7(ms, [0; 10]);
        assert_eq!((zero[6], zero[7], zero[8]), (0x70, 0, 0x80));
        // Later milliseconds sort after earlier ones whatever the random bits.
        assert!(uuid_v7(ms, [0xff; 10]) < uuid_v7(ms + 1, [0; 10]));
        assert!(uuid_v7(u64::from(u32::MAX), [0xff; 10]) < uuid_v7(1 << 40, [0; 10]));
    }
}
