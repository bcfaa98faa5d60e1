//! The user store port: accounts, case-insensitive uniqueness, paging, tokens.

use chrono::Utc;
use geonex_shared::domain::Role;
use geonex_shared::store::users::{CreateUserError, NewUser, TokenOwner, UserStore};
use uuid::Uuid;

fn user(name: &str, email: &str) -> NewUser {
    NewUser {
        user_id: Uuid::new_v4(),
        user_name: name.into(),
        display_name: format!("{name} Example"),
        email: email.into(),
        role: Role::Operator,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
    }
}

fn taken(r: Result<impl std::fmt::Debug, CreateUserError>) -> &'static str {
    match r {
        Err(CreateUserError::Taken(field)) => field,
        other => panic!("expected Taken, got {other:?}"),
    }
}

async fn create_and_log_in<S: UserStore>(store: S) {
    assert_eq!(store.users_revision().await.unwrap(), 0);
    let new = user("Alice.Smith", "Alice@Example.com");
    let created = store.create_user(new.clone()).await.unwrap();
    assert_eq!(created.user_id, new.user_id);
    assert_eq!(created.user_name, "Alice.Smith");
    assert_eq!(created.display_name, "Alice.Smith Example");
    assert_eq!(created.email, "Alice@Example.com");
    assert_eq!(created.role, Role::Operator);
    assert!((Utc::now() - created.created_at).num_seconds().abs() < 60);
    let rev = store.users_revision().await.unwrap();
    assert!(rev > 0);

    let (found, hash) = store.user_for_login("alice.SMITH").await.unwrap().unwrap();
    assert_eq!(found.user_id, new.user_id);
    assert_eq!(found.created_at, created.created_at);
    assert_eq!(hash.as_deref(), Some(new.password_hash.as_str()));
    assert!(store.user_for_login("bob").await.unwrap().is_none());
    assert!(store.user_for_login("alice").await.unwrap().is_none());

    store.create_user(user("bob", "bob@example.com")).await.unwrap();
    assert!(store.users_revision().await.unwrap() > rev);

    // Only argon2id hashes are stored, in that exact spelling.
    let bad = NewUser { password_hash: "$ARGON2ID$v=19$x".into(), ..user("carol", "carol@example.com") };
    assert!(matches!(store.create_user(bad).await, Err(CreateUserError::Store(_))));
}

async fn unique_names_and_emails<S: UserStore>(store: S) {
    store.create_user(user("alice", "alice@example.com")).await.unwrap();
    assert_eq!(taken(store.create_user(user("ALICE", "other@example.com")).await), "user_name");
    assert_eq!(taken(store.create_user(user("alice2", "ALICE@example.COM")).await), "email");
    // Both taken: the user name is reported.
    assert_eq!(taken(store.create_user(user("Alice", "Alice@Example.com")).await), "user_name");
    // A reused id is a store error, not a taken field.
    let dup_id = NewUser { user_id: store.user_for_login("alice").await.unwrap().unwrap().0.user_id, ..user("zed", "zed@x.org") };
    assert!(matches!(store.create_user(dup_id).await, Err(CreateUserError::Store(_))));
    assert_eq!(store.list_users(None, 10).await.unwrap().len(), 1);
}

async fn concurrent_creates<S: UserStore + Clone>(store: S) {
    let tasks: Vec<_> = ["dave", "DAVE", "Dave", "daVe"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let store = store.clone();
            tokio::spawn(async move { store.create_user(user(name, &format!("d{i}@example.com"))).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CreateUserError::Taken("user_name")) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn list_users_in_pages<S: UserStore>(store: S) {
    for name in ["carol", "Alice", "bob", "Dave", "erin"] {
        store.create_user(user(name, &format!("{name}@example.com"))).await.unwrap();
    }
    let names = |users: Vec<geonex_shared::store::users::UserRecord>| {
        users.into_iter().map(|u| u.user_name).collect::<Vec<_>>()
    };
    assert_eq!(names(store.list_users(None, 2).await.unwrap()), ["Alice", "bob"]);
    assert_eq!(names(store.list_users(Some("BOB"), 2).await.unwrap()), ["carol", "Dave"]);
    assert_eq!(names(store.list_users(Some("dave"), 2).await.unwrap()), ["erin"]);
    assert!(store.list_users(Some("erin"), 2).await.unwrap().is_empty());
}

async fn tokens<S: UserStore>(store: S) {
    let alice = store.create_user(user("alice", "alice@example.com")).await.unwrap();
    let now = Utc::now();
    assert!(store.token(Uuid::new_v4()).await.unwrap().is_none());

    // A login token: its owner, and its user's role rather than its own.
    let login = Uuid::new_v4();
    let hash: Vec<u8> = (0..32).collect();
    let expires = now + chrono::Duration::hours(12);
    let owner = TokenOwner::User { user_id: alice.user_id, user_name: "alice".into() };
    store.insert_token(login, &hash, &owner, Role::User, Some(expires)).await.unwrap();
    let t = store.token(login).await.unwrap().unwrap();
    assert_eq!(t.token_id, login);
    assert_eq!(t.secret_hash, hash);
    assert_eq!(t.owner, owner);
    assert_eq!(t.owner.label(), "alice");
    assert_eq!(t.role, Role::Operator);
    assert!((t.expires_at.unwrap() - expires).num_milliseconds().abs() <= 1);
    assert!(t.revoked_at.is_none());
    assert!(t.is_live(Utc::now()));

    // A service account token never expires unless told to.
    let service = Uuid::new_v4();
    let owner = TokenOwner::Service { name: "ci".into() };
    store.insert_token(service, &[7; 32], &owner, Role::Admin, None).await.unwrap();
    let t = store.token(service).await.unwrap().unwrap();
    assert_eq!(t.owner, owner);
    assert_eq!(t.owner.label(), "service:ci");
    assert_eq!(t.role, Role::Admin);
    assert!(t.expires_at.is_none());
    assert!(t.is_live(Utc::now() + chrono::Duration::days(3650)));

    // An expired token is stored as it is; it is just not live.
    let expired = Uuid::new_v4();
    store.insert_token(expired, &[1; 32], &TokenOwner::Service { name: "old".into() }, Role::User, Some(now - chrono::Duration::seconds(1))).await.unwrap();
    let t = store.token(expired).await.unwrap().unwrap();
    assert!(!t.is_live(Utc::now()));
    assert!(t.expires_at.unwrap() < Utc::now());

    // Revoking: once, and it stays revoked at the first time.
    store.revoke_token(login).await.unwrap();
    let revoked = store.token(login).await.unwrap().unwrap().revoked_at.unwrap();
    assert!((Utc::now() - revoked).num_seconds().abs() < 60);
    assert!(!store.token(login).await.unwrap().unwrap().is_live(Utc::now()));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.revoke_token(login).await.unwrap();
    assert_eq!(store.token(login).await.unwrap().unwrap().revoked_at, Some(revoked));
    store.revoke_token(Uuid::new_v4()).await.unwrap();
    assert!(store.token(service).await.unwrap().unwrap().revoked_at.is_none());

    // Only SHA-256 hashes, and only tokens of existing users.
    let x = TokenOwner::Service { name: "x".into() };
    assert!(store.insert_token(Uuid::new_v4(), &[0; 31], &x, Role::User, None).await.is_err());
    let ghost = TokenOwner::User { user_id: Uuid::new_v4(), user_name: "ghost".into() };
    assert!(store.insert_token(Uuid::new_v4(), &[0; 32], &ghost, Role::User, None).await.is_err());
    assert!(store.insert_token(service, &[0; 32], &TokenOwner::Service { name: "y".into() }, Role::User, None).await.is_err());
}

contract!(create_and_log_in, unique_names_and_emails, concurrent_creates, list_users_in_pages, tokens);
