//! The feed's domain types and the validation rules of the HTTP contract.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Timelike, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};

/// A value the contract does not accept: a machine-readable code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub code: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            code,
            message: message.into(),
        }
    }
}

/// Largest compact JSON accepted in `extra`.
pub const MAX_EXTRA_BYTES: usize = 8 * 1024;

/// An activity as stored and served: `{"id", "actor", "verb", "object", "target", "time",
/// "foreign_id", "to", "extra"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub id: String,
    pub actor: String,
    pub verb: String,
    pub object: String,
    pub target: Option<String>,
    #[serde(serialize_with = "serialize_time")]
    pub time: DateTime<Utc>,
    pub foreign_id: Option<String>,
    /// The users it is addressed to (their notification feeds), in the order given; `[]` when none.
    #[serde(default)]
    pub to: Vec<String>,
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Most distinct users an activity may be addressed to.
pub const MAX_TO: usize = 100;

/// The body of `POST /activities`. Unknown fields are an error: custom data goes in `extra`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewActivity {
    pub actor: String,
    pub verb: Option<String>,
    pub object: String,
    pub target: Option<String>,
    pub time: Option<String>,
    pub foreign_id: Option<String>,
    pub to: Option<Vec<String>>,
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl NewActivity {
    /// Checks every field and builds the activity to store, with a fresh id sorted by its `time`.
    pub fn into_activity(self, now: DateTime<Utc>) -> Result<Activity, ValidationError> {
        check_user_id("actor", &self.actor)?;
        check_user_id("object", &self.object)?;
        if let Some(target) = &self.target {
            check_user_id("target", target)?;
        }
        let verb = self.verb.unwrap_or_else(|| "post".to_owned());
        check_verb(&verb)?;
        if let Some(foreign_id) = &self.foreign_id {
            check_user_id("foreign_id", foreign_id)?;
        }
        let to = recipients(self.to.unwrap_or_default())?;
        let time = match &self.time {
            Some(text) => parse_time(text)?,
            None => truncate_to_micros(now),
        };
        if let Some(extra) = &self.extra {
            let size = serde_json::to_vec(extra)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_EXTRA_BYTES {
                return Err(ValidationError::new(
                    "extra_too_large",
                    format!("`extra` is {size} bytes of compact JSON; at most {MAX_EXTRA_BYTES} are accepted"),
                ));
            }
        }
        Ok(Activity {
            id: ActivityId::new(time).0,
            actor: self.actor,
            verb,
            object: self.object,
            target: self.target,
            time,
            foreign_id: self.foreign_id,
            to,
            extra: self.extra,
        })
    }
}

/// `to` with each id checked and repeats dropped (the first occurrence kept, in order).
fn recipients(to: Vec<String>) -> Result<Vec<String>, ValidationError> {
    let mut seen = std::collections::HashSet::with_capacity(to.len());
    let mut out = Vec::with_capacity(to.len().min(MAX_TO));
    for user in to {
        check_user_id("to", &user)?;
        if seen.insert(user.clone()) {
            out.push(user);
        }
        if out.len() > MAX_TO {
            return Err(ValidationError::new(
                "too_many_recipients",
                format!("`to` names more than {MAX_TO} distinct users"),
            ));
        }
    }
    Ok(out)
}

/// The body of `POST /follow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowRequest {
    pub follower: String,
    pub following: String,
}

/// Most edges one `POST /follow/batch` takes.
pub const MAX_FOLLOW_BATCH: usize = 100;

/// The body of `POST /follow/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowBatch {
    #[serde(deserialize_with = "objects")]
    pub follows: Vec<FollowRequest>,
}

/// A list whose items are JSON objects: serde would also read an array of the fields in order
/// as one, which the contract does not allow.
fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let items: Vec<serde_json::Map<String, serde_json::Value>> = Deserialize::deserialize(d)?;
    items
        .into_iter()
        .map(|m| serde_json::from_value(serde_json::Value::Object(m)))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// One edge of a batch's answer: the edge, and whether this batch created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchedEdge {
    #[serde(flatten)]
    pub edge: FollowEdge,
    pub created: bool,
}

/// A follow edge: `follower` receives the activities of `following`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowEdge {
    pub follower: String,
    pub following: String,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: DateTime<Utc>,
}

/// One entry of a followers or following list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relation {
    pub user: String,
    #[serde(serialize_with = "serialize_time")]
    pub since: DateTime<Utc>,
}

/// Activity ids: 16 hex digits of microseconds since the epoch of the activity's `time`, then 16
/// random hex digits. They sort as their activities' times do, and two actors never collide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActivityId(pub String);

impl ActivityId {
    pub fn new(time: DateTime<Utc>) -> Self {
        let random: u64 = rand::rng().random();
        ActivityId(format!("{:016x}{random:016x}", micros(time)))
    }

    /// The smallest id any activity at or after `time` can have: the lower bound of a time range.
    pub fn floor(time: DateTime<Utc>) -> String {
        format!("{:016x}{:016x}", micros(time), 0)
    }

    pub fn is_valid(id: &str) -> bool {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

fn micros(time: DateTime<Utc>) -> u64 {
    // Times before 1970 are refused by `parse_time`, so this never clamps a real activity.
    time.timestamp_micros().max(0) as u64
}

/// The UTC day an activity belongs to, for aggregation.
pub fn day_of(time: DateTime<Utc>) -> NaiveDate {
    time.date_naive()
}

/// Midnight UTC at the start of `day`.
pub fn start_of_day(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

pub fn serialize_time<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    // Every activity of a page has a time or two: written on the stack rather than in a String.
    let mut buf = [0; RFC3339_MAX_LEN];
    match write_time(*time, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&format_time(*time)),
    }
}

/// RFC 3339 in UTC with `Z`, with 0, 3, 6 or 9 fractional digits, as few as the value needs.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest [`write_time`] writes.
const RFC3339_MAX_LEN: usize = 30;

/// What [`format_time`] answers, written into `buf`; `None` for a year outside 0 to 9999, which
/// chrono writes with a sign.
fn write_time(time: DateTime<Utc>, buf: &mut [u8; RFC3339_MAX_LEN]) -> Option<&str> {
    fn digits(buf: &mut [u8], at: usize, mut value: u32, width: usize) -> usize {
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        at + width
    }
    let time = time.naive_utc();
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    let (mut second, mut nano) = (time.second(), time.nanosecond());
    // A leap second, as chrono writes it.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let mut at = 0;
    for (value, width, separator) in [
        (year, 4, b'-'),
        (time.month(), 2, b'-'),
        (time.day(), 2, b'T'),
        (time.hour(), 2, b':'),
        (time.minute(), 2, b':'),
    ] {
        at = digits(buf, at, value, width);
        buf[at] = separator;
        at += 1;
    }
    at = digits(buf, at, second, 2);
    let fraction = match nano {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1_000 == 0 => Some((n / 1_000, 6)),
        n => Some((n, 9)),
    };
    if let Some((value, width)) = fraction {
        buf[at] = b'.';
        at = digits(buf, at + 1, value, width);
    }
    buf[at] = b'Z';
    std::str::from_utf8(&buf[..=at]).ok()
}

/// Parses an RFC 3339 time (any offset), keeping microsecond precision, as the stores do.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, ValidationError> {
    let parsed = DateTime::parse_from_rfc3339(text).map_err(|e| {
        ValidationError::new(
            "invalid_time",
            format!("`time` is not an RFC 3339 time: {e}"),
        )
    })?;
    let utc = parsed.with_timezone(&Utc);
    if utc.timestamp() < 0 {
        return Err(ValidationError::new(
            "invalid_time",
            "`time` before 1970 is not accepted",
        ));
    }
    Ok(truncate_to_micros(utc))
}

pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

pub fn is_valid_user_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(is_id_char)
}

/// User, object and foreign ids: 1 to 128 characters of `A-Z a-z 0-9 _ - . : @`.
pub fn check_user_id(field: &str, id: &str) -> Result<(), ValidationError> {
    if is_valid_user_id(id) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "invalid_id",
            format!("`{field}` must be 1 to 128 characters of A-Z a-z 0-9 _ - . : @"),
        ))
    }
}

/// Verbs: 1 to 64 characters of `a-z 0-9 _ -`.
pub fn check_verb(verb: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&verb.len())
        && verb
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "invalid_verb",
            "`verb` must be 1 to 64 characters of a-z 0-9 _ -",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> Result<Activity, ValidationError> {
        let body: NewActivity = serde_json::from_str(json)
            .map_err(|e| ValidationError::new("invalid_json", e.to_string()))?;
        body.into_activity(Utc::now())
    }

    #[test]
    fn ids_sort_by_time_even_across_actors() {
        let early = parse_time("2026-11-29T10:00:00Z").unwrap();
        let late = parse_time("2026-11-29T10:00:00.000001Z").unwrap();
        for _ in 0..100 {
            assert!(ActivityId::new(early) < ActivityId::new(late));
        }
        assert!(ActivityId::floor(late) <= ActivityId::new(late).0);
        assert!(ActivityId::is_valid(&ActivityId::new(late).0));
    }

    #[test]
    fn time_keeps_microseconds_and_normalises_offsets() {
        let t = parse_time("2026-11-29T11:00:00.1234567+01:00").unwrap();
        assert_eq!(format_time(t), "2026-11-29T10:00:00.123456Z");
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn new_activity_defaults_verb_and_rejects_bad_fields() {
        let a = new(r#"{"actor":"usr_01","object":"obj_1"}"#).unwrap();
        assert_eq!(a.verb, "post");
        assert!(new(r#"{"actor":"usr 01","object":"o"}"#).is_err());
        assert!(new(r#"{"actor":"u","object":"o","verb":"Post"}"#).is_err());
        assert!(new(r#"{"actor":"u","object":"o","colour":"red"}"#).is_err());
        assert!(new(r#"{"actor":"u","object":5}"#).is_err());
        assert!(new(r#"{"actor":"u","object":"o","extra":[1]}"#).is_err());
        let big = format!(
            r#"{{"actor":"u","object":"o","extra":{{"k":"{}"}}}}"#,
            "x".repeat(MAX_EXTRA_BYTES)
        );
        assert_eq!(new(&big).unwrap_err().code, "extra_too_large");
        assert!(new(&format!(
            r#"{{"actor":"{}","object":"o"}}"#,
            "a".repeat(129)
        ))
        .is_err());
    }
    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let chrono = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut times: Vec<DateTime<Utc>> = [
            "2026-11-29T10:00:00Z",
            "2026-11-29T10:00:00.1Z",
            "2026-11-29T10:00:00.000001Z",
            "2026-11-29T10:00:00.123456789Z",
            "2026-11-29T10:00:00.000000001Z",
            "2026-11-29T10:00:00.120Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "1970-01-01T00:00:00Z",
        ]
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t).unwrap().to_utc())
        .collect();
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let secs = rng.random_range(0..253_402_300_800_i64);
            let nanos = match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(0..1000) * 1_000_000,
                2 => rng.random_range(0..1_000_000) * 1000,
                _ => rng.random_range(0..1_000_000_000),
            };
            times.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        times.push(leap);
        for t in times {
            let mut buf = [0; RFC3339_MAX_LEN];
            assert_eq!(write_time(t, &mut buf), Some(chrono(t).as_str()));
            assert_eq!(format_time(t), chrono(t));
            let json = serde_json::to_string(&Relation {
                user: "u".to_owned(),
                since: t,
            })
            .unwrap();
            assert_eq!(json, format!(r#"{{"user":"u","since":"{}"}}"#, chrono(t)));
        }
        for year in [-1, 10000] {
            let t = NaiveDate::from_ymd_opt(year, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc();
            assert_eq!(write_time(t, &mut [0; RFC3339_MAX_LEN]), None);
            let json = serde_json::to_string(&Relation {
                user: "u".to_owned(),
                since: t,
            })
            .unwrap();
            assert_eq!(json, format!(r#"{{"user":"u","since":"{}"}}"#, chrono(t)));
        }
    }

    /// Numbers in `extra` keep their value through every serialise/parse round trip, as the stores
    /// keep `extra` as JSON text (found by fuzzing: an integer too large for 64 bits became a float
    /// that drifted by one unit in the last place when parsed back).
    #[test]
    fn extra_numbers_survive_round_trips() {
        let a = new(r#"{"actor":"usr_01","object":"obj_1","extra":{"n":[2000000000000000000000000000000000000000000000000000000000000,2.5,1e300,-0.1,18446744073709551616]}}"#)
            .unwrap();
        let once: Activity = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let twice: Activity = serde_json::from_str(&serde_json::to_string(&once).unwrap()).unwrap();
        assert_eq!(once, a);
        assert_eq!(twice, once);
    }
}
