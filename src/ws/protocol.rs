//! The WebSocket wire format: one JSON object per text frame, discriminated by `type`.
//! docs/protocol.md is the reference; this module is the only place that knows the JSON.

use actors::{CoupleId, DeviceId, Seq, SignalId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::front::error::ApiError;
use crate::front::wire::{check_depth, json_error};

/// What a client may send.
#[derive(Debug)]
pub enum ClientMsg<'a> {
    /// Authenticate and enter the couple's room; `last_seq` resumes the mailbox.
    JoinCouple {
        /// The couple.
        couple: CoupleId,
        /// This device.
        device: DeviceId,
        /// The device token from pairing.
        token: String,
        /// The last seq processed before a reconnect.
        last_seq: Option<Seq>,
    },
    /// Leave the room but keep the socket.
    LeaveCouple,
    /// Relay a WebRTC offer, answer or ICE candidate.
    WebrtcSignal {
        /// One recipient, or every other device of the couple.
        to: Option<DeviceId>,
        /// Any JSON value, relayed untouched.
        payload: &'a RawValue,
        /// Lets a resend be recognised.
        id: Option<SignalId>,
    },
    /// Cumulative acknowledgement of the mailbox.
    Ack {
        /// Everything up to this seq was processed.
        seq: Seq,
    },
    /// Application-level keepalive; answered with `pong`.
    Ping,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    JoinCouple,
    LeaveCouple,
    WebrtcSignal,
    Ack,
    Ping,
    #[serde(other)]
    Unknown,
}

/// Every field any client message may carry; the `type` decides which are required. One pass
/// over the text, and the payload is borrowed, never re-serialized.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: Kind,
    couple_id: Option<CoupleId>,
    device_id: Option<DeviceId>,
    token: Option<String>,
    last_seq: Option<Seq>,
    to: Option<DeviceId>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    id: Option<SignalId>,
    seq: Option<Seq>,
}

/// A present `payload` is `Some`, even when it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::InvalidRequest(format!("missing field `{field}`")))
}

impl<'a> ClientMsg<'a> {
    /// Parses one text frame. Malformed JSON, wrong types, unknown types and missing fields are
    /// all a clear error, never a panic.
    pub fn parse(text: &'a str) -> Result<Self, ApiError> {
        let f: Frame<'a> =
            serde_json::from_str(text).map_err(|e| json_error("message", text.as_bytes(), &e))?;
        Ok(match f.kind {
            Kind::JoinCouple => ClientMsg::JoinCouple {
                couple: required(f.couple_id, "coupleId")?,
                device: required(f.device_id, "deviceId")?,
                token: required(f.token, "token")?,
                last_seq: f.last_seq,
            },
            Kind::LeaveCouple => ClientMsg::LeaveCouple,
            Kind::WebrtcSignal => {
                let payload = required(f.payload, "payload")?;
                check_depth(payload, "payload")?;
                ClientMsg::WebrtcSignal {
                    to: f.to,
                    payload,
                    id: f.id,
                }
            }
            Kind::Ack => ClientMsg::Ack {
                seq: required(f.seq, "seq")?,
            },
            Kind::Ping => ClientMsg::Ping,
            Kind::Unknown => return Err(ApiError::UnknownMessageType),
        })
    }
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMsg<'a> {
    /// Join succeeded.
    #[serde(rename_all = "camelCase")]
    Joined {
        /// The couple.
        couple_id: &'a CoupleId,
        /// This device.
        device_id: &'a DeviceId,
        /// Other devices connected now.
        peers: &'a [DeviceId],
        /// Whether every signal after `lastSeq` is still in the mailbox (docs §5.4).
        recovered: bool,
    },
    /// Another device connected.
    #[serde(rename_all = "camelCase")]
    PeerJoined {
        /// Which.
        device_id: &'a DeviceId,
    },
    /// Another device left.
    #[serde(rename_all = "camelCase")]
    PeerLeft {
        /// Which.
        device_id: &'a DeviceId,
    },
    /// A signal from the mailbox.
    WebrtcSignal {
        /// The sender.
        from: &'a DeviceId,
        /// Exactly what the sender sent.
        payload: &'a RawValue,
        /// Mailbox position; acknowledge with `ack`.
        seq: Seq,
        /// The signal's id.
        id: &'a SignalId,
    },
    /// A signal this socket sent was taken.
    Accepted {
        /// Its id.
        id: &'a SignalId,
    },
    /// Answer to `ping`.
    Pong,
    /// Something went wrong; `code` is stable, `message` is for humans.
    Error {
        /// Stable `snake_case` code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// The signal id this error is about, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a SignalId>,
    },
}

impl ServerMsg<'_> {
    /// The frame text.
    #[must_use]
    pub fn to_text(&self) -> String {
        // unwrap: these types always serialize (no maps with non-string keys, no failing impls).
        serde_json::to_string(self).expect("server messages always serialize")
    }

    /// An `error` message for `err`, using the same codes as the HTTP API.
    pub fn error<'b>(err: &ApiError, id: Option<&'b SignalId>) -> ServerMsg<'b> {
        ServerMsg::Error {
            code: err.code(),
            message: err.public_message(),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_message() {
        let j = r#"{"type":"join-couple","coupleId":"c","deviceId":"d","token":"t","lastSeq":7}"#;
        assert!(matches!(
            ClientMsg::parse(j).unwrap(),
            ClientMsg::JoinCouple {
                last_seq: Some(Seq(7)),
                ..
            }
        ));
        let s = r#"{"type":"webrtc-signal","to":"b","payload":{"sdp":"x\"y"},"id":"s1"}"#;
        let ClientMsg::WebrtcSignal { payload, .. } = ClientMsg::parse(s).unwrap() else {
            panic!("not a signal")
        };
        assert_eq!(payload.get(), r#"{"sdp":"x\"y"}"#);
        let null = r#"{"type":"webrtc-signal","payload":null}"#;
        assert!(matches!(
            ClientMsg::parse(null),
            Ok(ClientMsg::WebrtcSignal { .. })
        ));
        assert!(matches!(
            ClientMsg::parse(r#"{"type":"ack","seq":3}"#),
            Ok(ClientMsg::Ack { seq: Seq(3) })
        ));
        assert!(matches!(
            ClientMsg::parse(r#"{"type":"ping"}"#),
            Ok(ClientMsg::Ping)
        ));
        assert!(matches!(
            ClientMsg::parse(r#"{"type":"leave-couple"}"#),
            Ok(ClientMsg::LeaveCouple)
        ));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        for (text, code) in [
            ("not json", "invalid_request"),
            ("[1,2]", "invalid_request"),
            (r#"{"type":"ack"}"#, "invalid_request"),
            (r#"{"type":"ack","seq":"x"}"#, "invalid_request"),
            (r#"{"type":"webrtc-signal"}"#, "invalid_request"),
            (
                r#"{"type":"join-couple","coupleId":"bad id","deviceId":"d","token":"t"}"#,
                "invalid_request",
            ),
            (r#"{"type":"dance"}"#, "unknown_type"),
            (
                &format!(
                    r#"{{"type":"webrtc-signal","payload":{}1{}}}"#,
                    "[".repeat(1000),
                    "]".repeat(1000)
                ),
                "invalid_request",
            ),
            (
                &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
                "invalid_request",
            ),
        ] {
            let err = ClientMsg::parse(text).unwrap_err();
            assert_eq!(err.code(), code, "{text}");
        }
    }

    #[test]
    fn bad_input_messages_name_the_field_without_a_position() {
        for (text, message) in [
            (
                "not json",
                "message is not valid JSON: expected true, false or null (column 2)",
            ),
            (
                r#"{"type":"ack""#,
                "message is not valid JSON: it ends too early",
            ),
            ("[1,2]", "message must be a JSON object"),
            (r#"{"type":5}"#, "`type`: expected a string"),
            (r#"{"type":["ack"]}"#, "`type`: expected a string"),
            (r#"{"type":"ack"}"#, "missing field `seq`"),
            (
                r#"{"type":"ack","seq":"x"}"#,
                r#"`seq`: expected a non-negative integer, got string "x""#,
            ),
            (
                r#"{"type":"webrtc-signal","payload":1,"to":7}"#,
                "`to`: expected a string, got integer `7`",
            ),
            (
                r#"{"type":"webrtc-signal","payload":1,"to":"a b"}"#,
                "`to`: deviceId may only contain A-Z, a-z, 0-9, '_' and '-'",
            ),
            (
                r#"{"type":"join-couple","coupleId":"bad id","deviceId":"d","token":"t"}"#,
                "coupleId may only contain A-Z, a-z, 0-9, '_' and '-'",
            ),
        ] {
            let err = ClientMsg::parse(text).unwrap_err();
            assert_eq!(err.code(), "invalid_request", "{text}");
            assert_eq!(err.to_string(), message, "{text}");
        }
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let payload = serde_json::from_str::<&RawValue>(r#"{"a":1}"#).unwrap();
        let from = DeviceId::parse("a").unwrap();
        let id = SignalId::parse("s1").unwrap();
        let text = ServerMsg::WebrtcSignal {
            from: &from,
            payload,
            seq: Seq(9),
            id: &id,
        }
        .to_text();
        assert_eq!(
            text,
            r#"{"type":"webrtc-signal","from":"a","payload":{"a":1},"seq":9,"id":"s1"}"#
        );
        let c = CoupleId::parse("c").unwrap();
        let joined = ServerMsg::Joined {
            couple_id: &c,
            device_id: &from,
            peers: &[],
            recovered: true,
        }
        .to_text();
        assert_eq!(
            joined,
            r#"{"type":"joined","coupleId":"c","deviceId":"a","peers":[],"recovered":true}"#
        );
        assert_eq!(ServerMsg::Pong.to_text(), r#"{"type":"pong"}"#);
    }
}
