//! The image registry: registration, resubmission, decisions, the notification
//! commands each step queues, listing and its revision.

use geonex_shared::domain::{Action, CommandStatus, ImageRef};
use geonex_shared::store::email::CommandOrigin;
use geonex_shared::store::images::{
    Decision, ImageDecision, ImageError, ImageQuery, ImageStatus, ImageStore, NewImage,
};
use uuid::Uuid;

use crate::raw::Raw;

fn origin(who: &str) -> CommandOrigin {
    CommandOrigin { requested_by: who.into(), trace_id: format!("trace-{who}"), max_attempts: 5 }
}

fn new_image(name: &str, owner: &str, owner_user_id: Option<Uuid>, notify: &[&str]) -> NewImage {
    NewImage {
        image_name: ImageRef::parse(name).expect("image name"),
        description: format!("{name} detects fires"),
        organization: "GeoNEX".into(),
        owner: owner.into(),
        owner_user_id,
        notify: notify.iter().map(|s| s.to_string()).collect(),
        origin: origin(owner),
    }
}

fn decision(name: &str, decision: Decision, reason: Option<&str>) -> ImageDecision {
    ImageDecision {
        image_name: ImageRef::parse(name).expect("image name"),
        decision,
        reason: reason.map(str::to_owned),
        origin: origin("admin"),
    }
}

fn query(status: Option<ImageStatus>, owner: Option<&str>, after: Option<&str>, limit: i64) -> ImageQuery {
    ImageQuery { status, owner: owner.map(str::to_owned), after_image_name: after.map(str::to_owned), limit }
}

fn names(images: &[geonex_shared::store::images::ImageRecord]) -> Vec<&str> {
    images.iter().map(|i| i.image_name.as_str()).collect()
}

async fn register_queues_notices_and_refuses_duplicates<S: ImageStore + Raw>(store: S) {
    store.add_user("zed", "Zed@example.com", "admin").await;
    store.add_user("amy", "amy@example.com", "admin").await;
    store.add_user("bob", "bob@example.com", "user").await;

    // No explicit recipients: every administrator, ordered by address.
    let change = store.register_image(new_image("geonex/fire:1.5", "alice", None, &[])).await.expect("register");
    let image = &change.image;
    assert_eq!(image.image_name, "geonex/fire:1.5");
    assert_eq!(image.repository, "geonex/fire");
    assert_eq!(image.tag.as_deref(), Some("1.5"));
    assert_eq!(image.digest, None);
    assert_eq!(image.status, ImageStatus::Pending);
    assert_eq!(image.owner, "alice");
    assert_eq!(image.description, "geonex/fire:1.5 detects fires");
    assert_eq!(image.organization, "GeoNEX");
    assert_eq!((image.reason.as_deref(), image.decided_by.as_deref(), image.decided_at), (None, None, None));
    assert_eq!(image.runners, 0);
    let to: Vec<&str> = change.emails.iter().map(|c| c.params["to"].as_str().unwrap_or("")).collect();
    assert_eq!(to, ["amy@example.com", "Zed@example.com"]);
    for c in &change.emails {
        assert_eq!(c.action, Action::SendEmail);
        assert_eq!(c.status, CommandStatus::Queued);
        assert_eq!(c.runner_id, None);
        assert_eq!(c.requested_by, "alice");
        assert_eq!(c.trace_id, "trace-alice");
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.params["kind"], "image_registered");
        assert_eq!(c.params["image_name"], "geonex/fire:1.5");
        assert_eq!(c.params["user_name"], "alice");
        assert_eq!(c.params["organization"], "GeoNEX");
    }

    // Explicit recipients replace the administrators.
    let pinned = format!("geonex/smoke@sha256:{}", "0123456789abcdef".repeat(4));
    let change = store
        .register_image(new_image(&pinned, "bob", None, &["ops@example.com"]))
        .await
        .expect("register with recipients");
    assert_eq!(change.image.repository, "geonex/smoke");
    assert!(change.image.digest.as_deref().is_some_and(|d| d.starts_with("sha256:")));
    assert_eq!(change.emails.len(), 1);
    assert_eq!(change.emails[0].params["to"], "ops@example.com");

    // A pending image cannot be registered again, by anyone, and nothing is queued.
    let commands = store.int("select count(*) from command", &[]).await;
    for owner in ["alice", "mallory"] {
        match store.register_image(new_image("geonex/fire:1.5", owner, None, &["x@example.com"])).await {
            Err(ImageError::Exists(name)) => assert_eq!(name, "geonex/fire:1.5"),
            other => panic!("expected Exists, got {other:?}"),
        }
    }
    assert_eq!(store.int("select count(*) from command", &[]).await, commands);

    assert!(store.get_image("geonex/none:1").await.expect("get").is_none());
    let got = store.get_image("geonex/fire:1.5").await.expect("get").expect("image");
    assert_eq!(got.owner, "alice");
    assert_eq!(got.status, ImageStatus::Pending);
    assert_eq!(store.image_status("geonex/fire:1.5").await.expect("status"), Some(ImageStatus::Pending));
    assert_eq!(store.image_status("geonex/none:1").await.expect("status"), None);
}

async fn decisions_notify_the_applicant<S: ImageStore + Raw>(store: S) {
    let carol = store.add_user("carol", "carol@example.com", "user").await;

    store.register_image(new_image("geonex/fire:2", "carol", Some(carol), &["ops@example.com"])).await.expect("register");
    let change = store.decide_image(decision("geonex/fire:2", Decision::Approve, Some("looks fine"))).await.expect("approve");
    assert_eq!(change.image.status, ImageStatus::Approved);
    assert_eq!(change.image.reason.as_deref(), Some("looks fine"));
    assert_eq!(change.image.decided_by.as_deref(), Some("admin"));
    assert!(change.image.decided_at.is_some());
    assert_eq!(change.emails.len(), 1);
    let notice = &change.emails[0];
    assert_eq!(notice.action, Action::SendEmail);
    assert_eq!(notice.requested_by, "admin");
    assert_eq!(notice.params["kind"], "image_approved");
    assert_eq!(notice.params["to"], "carol@example.com");
    assert_eq!(notice.params["user_name"], "carol");
    assert_eq!(notice.params["reason"], "looks fine");
    assert!(notice.params.get("description").is_none());

    // A decided image stays decided.
    for d in [Decision::Approve, Decision::Reject] {
        match store.decide_image(decision("geonex/fire:2", d, None)).await {
            Err(ImageError::AlreadyDecided { name, status }) => {
                assert_eq!(name, "geonex/fire:2");
                assert_eq!(status, "approved");
            }
            other => panic!("expected AlreadyDecided, got {other:?}"),
        }
    }
    match store.decide_image(decision("geonex/none:1", Decision::Approve, None)).await {
        Err(ImageError::NotFound(name)) => assert_eq!(name, "geonex/none:1"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Nor can an approved image be registered again, even by its owner.
    assert!(matches!(
        store.register_image(new_image("geonex/fire:2", "carol", Some(carol), &["ops@example.com"])).await,
        Err(ImageError::Exists(_))
    ));

    // An applicant without an account hears nothing of the decision.
    store.register_image(new_image("geonex/fire:3", "dave", None, &["ops@example.com"])).await.expect("register");
    let rejected = store.decide_image(decision("geonex/fire:3", Decision::Reject, Some("no docs"))).await.expect("reject");
    assert_eq!(rejected.image.status, ImageStatus::Rejected);
    assert_eq!(rejected.image.reason.as_deref(), Some("no docs"));
    assert!(rejected.emails.is_empty());

    // A rejected image: someone else cannot take the name, its owner may resubmit.
    assert!(matches!(
        store.register_image(new_image("geonex/fire:3", "erin", None, &["ops@example.com"])).await,
        Err(ImageError::Exists(_))
    ));
    let mut again = new_image("geonex/fire:3", "dave", None, &["ops@example.com"]);
    again.description = "now with docs".into();
    let resubmitted = store.register_image(again).await.expect("resubmit");
    assert_eq!(resubmitted.image.status, ImageStatus::Pending);
    assert_eq!(resubmitted.image.description, "now with docs");
    assert_eq!((resubmitted.image.reason.as_deref(), resubmitted.image.decided_by.as_deref()), (None, None));
    assert_eq!(resubmitted.image.decided_at, None);
    assert!(resubmitted.image.created_at >= rejected.image.created_at);
    assert_eq!(resubmitted.emails.len(), 1);

    // A rejection notice carries the reason.
    store.register_image(new_image("geonex/fire:4", "carol", Some(carol), &["ops@example.com"])).await.expect("register");
    let change = store.decide_image(decision("geonex/fire:4", Decision::Reject, Some("unsafe"))).await.expect("reject");
    assert_eq!(change.emails.len(), 1);
    assert_eq!(change.emails[0].params["kind"], "image_rejected");
    assert_eq!(change.emails[0].params["reason"], "unsafe");
}

async fn listing_filters_and_pages_by_name<S: ImageStore + Raw>(store: S) {
    for (name, owner) in [("geonex/c:1", "ann"), ("geonex/a:1", "ann"), ("geonex/b:1", "ben"), ("geonex/d:1", "ben")] {
        store.register_image(new_image(name, owner, None, &["ops@example.com"])).await.expect("register");
    }
    store.decide_image(decision("geonex/b:1", Decision::Approve, None)).await.expect("approve");
    store.decide_image(decision("geonex/d:1", Decision::Reject, Some("no"))).await.expect("reject");

    let all = store.list_images(&query(None, None, None, 10)).await.expect("list");
    assert_eq!(names(&all), ["geonex/a:1", "geonex/b:1", "geonex/c:1", "geonex/d:1"]);
    let page = store.list_images(&query(None, None, None, 2)).await.expect("page 1");
    assert_eq!(names(&page), ["geonex/a:1", "geonex/b:1"]);
    let page = store.list_images(&query(None, None, Some("geonex/b:1"), 2)).await.expect("page 2");
    assert_eq!(names(&page), ["geonex/c:1", "geonex/d:1"]);
    let page = store.list_images(&query(None, None, Some("geonex/d:1"), 2)).await.expect("page 3");
    assert!(page.is_empty());

    let pending = store.list_images(&query(Some(ImageStatus::Pending), None, None, 10)).await.expect("pending");
    assert_eq!(names(&pending), ["geonex/a:1", "geonex/c:1"]);
    let bens = store.list_images(&query(None, Some("ben"), None, 10)).await.expect("ben's");
    assert_eq!(names(&bens), ["geonex/b:1", "geonex/d:1"]);
    let both = store.list_images(&query(Some(ImageStatus::Approved), Some("ben"), None, 10)).await.expect("both");
    assert_eq!(names(&both), ["geonex/b:1"]);
    let none = store.list_images(&query(Some(ImageStatus::Approved), Some("ann"), None, 10)).await.expect("none");
    assert!(none.is_empty());

    // Live runners using an image are counted; deleted ones are not.
    store.add_runner("r-1", "geonex/b:1", "s3://bkt/one").await;
    store.add_runner("r-2", "geonex/b:1", "s3://bkt/two").await;
    store.add_runner("r-3", "geonex/b:1", "s3://bkt/three").await;
    store.exec("update runner set desired_state = 'deleted' where runner_id = $1", &["r-3"]).await;
    let b = store.get_image("geonex/b:1").await.expect("get").expect("image");
    assert_eq!(b.runners, 2);
    let listed = store.list_images(&query(None, Some("ben"), None, 1)).await.expect("list");
    assert_eq!(listed[0].runners, 2);
}

async fn revision_follows_images_and_runners<S: ImageStore + Raw>(store: S) {
    let r0 = store.images_revision().await.expect("revision");
    store.register_image(new_image("geonex/a:1", "ann", None, &[])).await.expect("register");
    let r1 = store.images_revision().await.expect("revision");
    assert!(r1 > r0);
    assert_eq!(store.images_revision().await.expect("revision"), r1);
    store.decide_image(decision("geonex/a:1", Decision::Approve, None)).await.expect("approve");
    let r2 = store.images_revision().await.expect("revision");
    assert!(r2 > r1);
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/one").await;
    let r3 = store.images_revision().await.expect("revision");
    assert!(r3 > r2);
    // A refused registration changes nothing.
    assert!(store.register_image(new_image("geonex/a:1", "ann", None, &[])).await.is_err());
    assert_eq!(store.images_revision().await.expect("revision"), r3);
}

contract!(
    register_queues_notices_and_refuses_duplicates,
    decisions_notify_the_applicant,
    listing_filters_and_pages_by_name,
    revision_follows_images_and_runners,
);
