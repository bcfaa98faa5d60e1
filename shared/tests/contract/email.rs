//! E-mail commands (idempotent submission), the delivery record that makes a
//! re-run send at most once, and the administrators' addresses.

use geonex_shared::domain::{Action, CommandStatus};
use geonex_shared::store::SubmitError;
use geonex_shared::store::email::{
    CommandOrigin, DeliveryStatus, EmailKind, EmailParams, EmailStore, NewEmailCommand,
};
use uuid::Uuid;

use crate::raw::Raw;

fn params(to: &str) -> EmailParams {
    EmailParams {
        kind: EmailKind::ImageNotice,
        to: to.into(),
        image_name: "geonex/fire:1.5".into(),
        user_name: "alice".into(),
        reason: None,
        description: Some("detects fires".into()),
        organization: None,
    }
}

fn command(to: &str, requested_by: &str, key: Option<&str>) -> NewEmailCommand {
    NewEmailCommand {
        command_id: Uuid::now_v7(),
        params: params(to),
        origin: CommandOrigin { requested_by: requested_by.into(), trace_id: "trace-1".into(), max_attempts: 3 },
        idempotency_key: key.map(str::to_owned),
    }
}

async fn submit_is_idempotent_per_key<S: EmailStore + Raw>(store: S) {
    let first = command("alice@example.com", "svc", Some("k-1"));
    let submitted = store.submit_email(first.clone()).await.expect("submit");
    assert!(submitted.created);
    let c = &submitted.command;
    assert_eq!(c.command_id, first.command_id);
    assert_eq!(c.action, Action::SendEmail);
    assert_eq!(c.status, CommandStatus::Queued);
    assert_eq!((c.attempts, c.max_attempts), (0, 3));
    assert_eq!(c.runner_id, None);
    assert_eq!(c.requested_by, "svc");
    assert_eq!(c.trace_id, "trace-1");
    assert_eq!(c.params, serde_json::to_value(params("alice@example.com")).expect("json"));
    assert_eq!(c.result, None);
    assert_eq!((c.started_at, c.finished_at, c.next_attempt_at), (None, None, None));

    // The same request under the same key: the earlier command, nothing new.
    let again = store.submit_email(command("alice@example.com", "svc", Some("k-1"))).await.expect("repeat");
    assert!(!again.created);
    assert_eq!(again.command.command_id, first.command_id);
    assert_eq!(again.command.seq, submitted.command.seq);

    // Another request under that key is refused.
    match store.submit_email(command("bob@example.com", "svc", Some("k-1"))).await {
        Err(SubmitError::KeyReused) => {}
        other => panic!("expected the key's reuse to be refused, got {other:?}"),
    }

    // Keys belong to their requester; no key means a new command each time.
    assert!(store.submit_email(command("alice@example.com", "other", Some("k-1"))).await.expect("other").created);
    let a = store.submit_email(command("alice@example.com", "svc", None)).await.expect("no key");
    let b = store.submit_email(command("alice@example.com", "svc", None)).await.expect("no key");
    assert!(a.created && b.created);
    assert_ne!(a.command.command_id, b.command.command_id);
    assert!(b.command.seq > a.command.seq);
    assert_eq!(store.int("select count(*) from command where action = 'send_email'", &[]).await, 4);

    // Concurrent submissions under one key record one command.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.submit_email(command("carl@example.com", "svc", Some("k-2"))).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let s = t.await.expect("task").expect("submit");
        created += usize::from(s.created);
        ids.push(s.command.command_id);
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(store.int("select count(*) from command where idempotency_key = 'k-2'", &[]).await, 1);
}

async fn delivery_is_recorded_once_sent<S: EmailStore + Raw>(store: S) {
    let id = store.submit_email(command("alice@example.com", "svc", None)).await.expect("submit").command.command_id;
    assert!(store.delivery(id).await.expect("delivery").is_none());

    store.begin_delivery(id, "<m1@geonex>", "alice@example.com").await.expect("begin");
    let d = store.delivery(id).await.expect("delivery").expect("record");
    assert_eq!(d.command_id, id);
    assert_eq!(d.message_id, "<m1@geonex>");
    assert_eq!(d.recipient, "alice@example.com");
    assert_eq!(d.status, DeliveryStatus::Sending);
    assert_eq!(d.sends, 1);
    assert_eq!((d.smtp_reply, d.sent_at), (None, None));

    // A send whose outcome was unknown is started again: counted, same message id.
    store.begin_delivery(id, "<m2@geonex>", "alice@example.com").await.expect("begin again");
    let d = store.delivery(id).await.expect("delivery").expect("record");
    assert_eq!((d.sends, d.message_id.as_str(), d.status), (2, "<m1@geonex>", DeliveryStatus::Sending));

    store.mark_sent(id, "250 2.0.0 queued as A1").await.expect("sent");
    let sent = store.delivery(id).await.expect("delivery").expect("record");
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(sent.smtp_reply.as_deref(), Some("250 2.0.0 queued as A1"));
    assert!(sent.sent_at.is_some());
    assert_eq!(sent.sends, 2);

    // Once sent, neither a new start nor a second acceptance changes the record.
    store.begin_delivery(id, "<m3@geonex>", "alice@example.com").await.expect("begin after sent");
    store.mark_sent(id, "250 other").await.expect("sent again");
    let after = store.delivery(id).await.expect("delivery").expect("record");
    assert_eq!(after.status, DeliveryStatus::Sent);
    assert_eq!(after.sends, 2);
    assert_eq!(after.message_id, "<m1@geonex>");
    assert_eq!(after.smtp_reply.as_deref(), Some("250 2.0.0 queued as A1"));
    assert_eq!(after.sent_at, sent.sent_at);

    // Marking a command that never started sending records nothing.
    let other = store.submit_email(command("bob@example.com", "svc", None)).await.expect("submit").command.command_id;
    store.mark_sent(other, "250").await.expect("mark");
    assert!(store.delivery(other).await.expect("delivery").is_none());
    // A delivery belongs to an existing command.
    assert!(store.begin_delivery(Uuid::now_v7(), "<m@geonex>", "x@example.com").await.is_err());
}

async fn admin_emails_lists_administrators_by_address<S: EmailStore + Raw>(store: S) {
    assert!(store.admin_emails().await.expect("none").is_empty());
    store.add_user("zed", "zed@example.com", "admin").await;
    store.add_user("op", "op@example.com", "operator").await;
    store.add_user("Amy", "Amy@example.com", "admin").await;
    store.add_user("bob", "bob@example.com", "user").await;
    store.add_user("ben", "ben@example.com", "admin").await;
    assert_eq!(store.admin_emails().await.expect("admins"), ["Amy@example.com", "ben@example.com", "zed@example.com"]);
}

contract!(
    submit_is_idempotent_per_key,
    delivery_is_recorded_once_sent,
    admin_emails_lists_administrators_by_address,
);
