//! A room that panics is replaced without losing signals and without other rooms noticing.

use serde_json::json;

use crate::helpers::{TestApp, signal};

#[tokio::test]
async fn a_panicking_room_restarts_and_other_rooms_are_unaffected() {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let two = app.pair().await;
    let (mut a1, _) = app.join(&one, &one.a, None).await;
    let (mut a2, _) = app.join(&two, &two.a, None).await;
    let (mut b2, _) = app.join(&two, &two.b, None).await;
    a2.recv_type("peer-joined").await;
    // A signal waiting for one's offline device b.
    a1.send(signal(Some("b"), &json!("kept"), Some("k1"))).await;
    a1.recv_type("accepted").await;

    app.rooms
        .inject_panic(&TestApp::couple_id(&one))
        .await
        .unwrap();
    a1.recv_error("unavailable").await;
    assert_eq!(app.room_failures().await, 1);

    // The other couple's room never noticed.
    a2.send(signal(Some("b"), &json!("still here"), None)).await;
    assert_eq!(b2.recv_type("webrtc-signal").await["payload"], "still here");

    // The socket rejoins a fresh room on the same connection, and the stored signal is there.
    a1.send(crate::helpers::join_msg(&one.id, &one.a, None))
        .await;
    a1.recv_type("joined").await;
    let (mut b1, _) = app.join(&one, &one.b, None).await;
    let m = b1.recv_type("webrtc-signal").await;
    assert_eq!(
        (m["payload"].clone(), m["id"].clone()),
        (json!("kept"), json!("k1"))
    );
    app.stop().await;
}
