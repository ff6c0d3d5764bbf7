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

#[tokio::test]
async fn a_bogus_last_seq_cannot_hide_later_signals_after_a_restart() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    a.send(signal(Some("b"), &json!("first"), Some("f1"))).await;
    a.recv_type("accepted").await;
    // b claims to have processed far more than was ever sent.
    let (b, _) = app.join(&couple, &couple.b, Some(1 << 50)).await;
    b.close().await;
    a.recv_type("peer-joined").await;
    a.recv_type("peer-left").await;
    a.send(signal(Some("b"), &json!("second"), Some("f2")))
        .await;
    a.recv_type("accepted").await;
    // A fresh room reloads mailboxes from the store, with the stored acknowledgement.
    app.rooms
        .inject_panic(&TestApp::couple_id(&couple))
        .await
        .unwrap();
    a.recv_error("unavailable").await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let m = b.recv_type("webrtc-signal").await;
    assert_eq!(m["payload"], "second");
    app.stop().await;
}

#[tokio::test]
async fn the_pairing_and_backup_actors_are_restarted_after_a_panic() {
    use reqwest::StatusCode;

    use crate::helpers::ok_json;
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    ok_json(
        app.upload(&couple.a, b"before".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;

    let wait = crate::helpers::WAIT;
    let restarted = tokio::time::timeout(wait, app.pairing.inject_panic()).await;
    assert!(restarted.is_ok(), "the pairing actor was restarted");
    let restarted = tokio::time::timeout(wait, app.backups.inject_panic()).await;
    assert!(restarted.is_ok(), "the backup actor was restarted");

    // Both work again, with their state intact (it lives in the store).
    let c = app.add_device(&couple, "c").await;
    let res = app.get_signals(&couple.id, "c", Some(&c.token), None).await;
    ok_json(res, StatusCode::OK).await;
    ok_json(
        app.upload(&couple.b, b"after".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let list = ok_json(
        app.get_auth(&format!("/api/backups/{}", couple.id), &couple.a)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["backups"].as_array().unwrap().len(), 2);
    app.stop().await;
}
