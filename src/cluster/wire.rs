//! Reading the scripts' replies and the channel's messages: Redis values into domain types.
//! A malformed value is an error (or a skipped entry), never a panic.

use std::sync::Arc;

use actors::cluster::{BusError, BusEvent};
use actors::{CoupleId, DeviceId, Payload, Seq, Signal, SignalId, Timestamp};
use redis::Value;

fn malformed(what: &str) -> BusError {
    BusError::Unavailable(format!("malformed reply from Redis: {what}"))
}

/// The elements of an array reply.
pub(super) fn array(v: &Value) -> Result<&[Value], BusError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        _ => Err(malformed("expected an array")),
    }
}

/// A string element.
pub(super) fn text(v: Option<&Value>) -> Result<String, BusError> {
    match v {
        Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        Some(Value::Int(i)) => Ok(i.to_string()),
        _ => Err(malformed("expected a string")),
    }
}

/// A number element (Lua numbers come back as integers, seq numbers as strings).
pub(super) fn int(v: Option<&Value>) -> Result<u64, BusError> {
    match v {
        Some(Value::Int(i)) => u64::try_from(*i).map_err(|_| malformed("negative number")),
        other => text(other)?
            .parse()
            .map_err(|_| malformed("expected a number")),
    }
}

/// A count element.
pub(super) fn count(v: Option<&Value>) -> Result<usize, BusError> {
    int(v).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// An array of strings.
pub(super) fn strings(v: &Value) -> Result<Vec<String>, BusError> {
    array(v)?.iter().map(|s| text(Some(s))).collect()
}

/// A refusal word from a script.
pub(super) fn refusal(word: &str) -> BusError {
    match word {
        "EPOCH" => BusError::NeedsEpoch,
        "UNKNOWN" => BusError::UnknownDevice,
        "FULL" => BusError::MailboxFull,
        other => malformed(other),
    }
}

/// A presence hash (`HGETALL`: device, owner, device, owner, …).
pub(super) fn presence(v: Option<&Value>) -> Result<Vec<(DeviceId, String)>, BusError> {
    let flat = match v {
        Some(Value::Map(pairs)) => {
            return pairs
                .iter()
                .filter_map(|(d, o)| {
                    let d = DeviceId::parse(text(Some(d)).ok()?).ok()?;
                    Some(Ok((d, text(Some(o)).ok()?)))
                })
                .collect();
        }
        Some(v) => strings(v)?,
        None => return Err(malformed("missing presence")),
    };
    Ok(flat
        .chunks_exact(2)
        .filter_map(|p| Some((DeviceId::parse(p[0].clone()).ok()?, p[1].clone())))
        .collect())
}

/// Stream entries (`XRANGE`: `[id, [field, value, …]]`) as signals, oldest first. An entry
/// that does not read back (it never should) is logged and skipped, as a corrupt stored
/// signal is in a single node.
pub(super) fn entries(couple: &CoupleId, v: Option<&Value>) -> Result<Vec<Signal>, BusError> {
    let items = array(v.ok_or_else(|| malformed("missing entries"))?)?;
    Ok(items
        .iter()
        .filter_map(|e| match entry(e) {
            Ok(s) => Some(s),
            Err(cause) => {
                tracing::error!(couple_id = %couple, %cause, "skipping a stream entry");
                None
            }
        })
        .collect())
}

fn entry(v: &Value) -> Result<Signal, BusError> {
    let parts = array(v)?;
    let id = text(parts.first())?;
    let seq = id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("entry id"))?;
    let fields = strings(parts.get(1).ok_or_else(|| malformed("entry fields"))?)?;
    let get = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|f| f[0] == name)
            .map(|f| f[1].clone())
            .ok_or_else(|| malformed(name))
    };
    Ok(Signal {
        seq: Seq(seq),
        id: SignalId::parse(get("i")?).map_err(|_| malformed("signal id"))?,
        from: DeviceId::parse(get("f")?).map_err(|_| malformed("sender"))?,
        payload: Payload::parse(get("p")?).map_err(|_| malformed("payload"))?,
        created_at: Timestamp(get("t")?.parse().map_err(|_| malformed("created"))?),
        expires_at: Timestamp(get("x")?.parse().map_err(|_| malformed("expires"))?),
    })
}

/// A message on a couple's channel, as the scripts publish it (`|`-separated; ids never
/// hold `|` or `,`, and the payload comes last).
pub(super) fn event(message: &[u8]) -> Option<BusEvent> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(9, '|');
    let kind = parts.next()?;
    let mut next = || parts.next();
    let device = |s: Option<&str>| DeviceId::parse(s?).ok();
    Some(match kind {
        "S" => {
            let seq = Seq(next()?.parse().ok()?);
            let from = device(next())?;
            let id = SignalId::parse(next()?).ok()?;
            let created_at = Timestamp(next()?.parse().ok()?);
            let expires_at = Timestamp(next()?.parse().ok()?);
            let to = next()?
                .split(',')
                .filter(|d| !d.is_empty())
                .map(DeviceId::parse)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let published_ms = next()?.parse().ok()?;
            let payload = Payload::parse(next()?).ok()?;
            let signal = Arc::new(Signal {
                seq,
                id,
                from,
                payload,
                created_at,
                expires_at,
            });
            BusEvent::Signal {
                signal,
                to,
                published_ms,
            }
        }
        "J" => BusEvent::Joined {
            device: device(next())?,
            owner: next()?.to_owned(),
        },
        "K" => BusEvent::Replaced {
            device: device(next())?,
            old: next()?.to_owned(),
            new: next()?.to_owned(),
        },
        "L" => BusEvent::Left {
            device: device(next())?,
            owner: next()?.to_owned(),
        },
        "R" => BusEvent::Revoked {
            device: device(next())?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_message_reads_back_with_pipes_in_its_payload() {
        let msg = br#"S|83886081|a|x1|1000|301000|b,c|1764500000000|{"sdp":"v=0|a|b"}"#;
        let Some(BusEvent::Signal {
            signal,
            to,
            published_ms,
        }) = event(msg)
        else {
            panic!("not a signal");
        };
        assert_eq!(signal.seq, Seq(83_886_081));
        assert_eq!(signal.payload.as_str(), r#"{"sdp":"v=0|a|b"}"#);
        assert_eq!(to.len(), 2);
        assert_eq!(signal.expires_at, Timestamp(301_000));
        assert_eq!(published_ms, 1_764_500_000_000);
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for msg in [&b"S|x|a"[..], b"Q|a", b"J|bad id!|o", b"\xff"] {
            assert!(event(msg).is_none(), "{msg:?}");
        }
    }
}
