//! Credentials: password policy and hashing (argon2id, OWASP parameters), and the
//! opaque bearer tokens the API hands out.
//!
//! A token reads `gnx_<id>_<secret>`: the id finds the row, and the secret is
//! compared with the stored SHA-256 of it in constant time. Only that hash is
//! stored, so a database leak yields no usable token. Agent tokens (one per
//! runner, for the on-instance agent) use the `gnxa_` prefix and are refused
//! everywhere else.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::FieldError;

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Passwords of acceptable length that appear at the top of breached-password lists.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// A password that meets the policy. Never printed: `Debug` is redacted.
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

impl Password {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "password";
        let n = value.chars().count();
        if n == 0 {
            return Err(FieldError::missing(FIELD));
        }
        if n < MIN_PASSWORD_CHARS {
            return Err(FieldError::invalid(FIELD, format!("must be at least {MIN_PASSWORD_CHARS} characters")));
        }
        if n > MAX_PASSWORD_CHARS {
            return Err(FieldError::invalid(FIELD, format!("must be at most {MAX_PASSWORD_CHARS} characters")));
        }
        let lower = value.to_lowercase();
        let first = lower.chars().next().unwrap_or_default();
        if lower.chars().all(|c| c == first) || COMMON_PASSWORDS.lines().any(|p| p.trim() == lower) {
            return Err(FieldError::invalid(FIELD, "is too common; choose another"));
        }
        Ok(Self(SecretString::from(value.to_owned())))
    }

    /// The argon2id PHC string to store. CPU-heavy: call from a blocking thread.
    pub fn hash(&self) -> Result<String, String> {
        Argon2::default()
            .hash_password(self.0.expose_secret().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Password {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::domain::deserialize_parsed(d, Self::parse)
    }
}

crate::domain::schema!(
    Password,
    crate::domain::text_schema(
        "Not a common password. Send it in the body, never the URL.",
        MIN_PASSWORD_CHARS,
        MAX_PASSWORD_CHARS,
        None,
        "correct horse battery staple",
    )
    .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(utoipa::openapi::schema::KnownFormat::Password)))
);

/// Checks a password against a stored PHC string. CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// A PHC string for no password, to spend the same time on unknown users as on
/// known ones (so response time does not reveal which user names exist).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        Password(SecretString::from("geonex-dummy-password-never-valid".to_owned())).hash().unwrap_or_default()
    });
    &DUMMY
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A user's login or a service account's token.
    Api,
    /// A runner's on-instance agent.
    Agent,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "gnx",
            TokenKind::Agent => "gnxa",
        }
    }
}

/// A freshly minted token: the text to hand out once, and what to store.
pub struct NewToken {
    pub token_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub text: SecretString,
}

pub fn mint_token(kind: TokenKind) -> NewToken {
    let token_id = Uuid::new_v4();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let text = format!("{}_{}_{}", kind.prefix(), token_id.simple(), secret);
    NewToken { token_id, secret_hash: hash_secret(&secret), text: SecretString::from(text) }
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A presented token, split into its parts. Says nothing yet about validity.
#[derive(Debug)]
pub struct PresentedToken {
    pub kind: TokenKind,
    pub token_id: Uuid,
    secret: String,
}

impl PresentedToken {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '_');
        let kind = match parts.next()? {
            "gnx" => TokenKind::Api,
            "gnxa" => TokenKind::Agent,
            _ => return None,
        };
        let token_id = Uuid::try_parse(parts.next()?).ok()?;
        let secret = parts.next()?;
        if secret.is_empty() || secret.len() > 100 {
            return None;
        }
        Some(Self { kind, token_id, secret: secret.to_owned() })
    }

    /// Constant-time comparison with the stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        hash_secret(&self.secret).ct_eq(stored_hash).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_policy_refuses_short_long_and_common_passwords() {
        assert_eq!(Password::parse("short").unwrap_err().field, "password");
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert!(Password::parse("aaaaaaaaaaaaaa").is_err());
        assert!(Password::parse("Password1234").is_err());
        assert!(Password::parse("correct horse battery").is_ok());
        assert!(!format!("{:?}", Password::parse("correct horse battery").unwrap()).contains("horse"));
    }

    #[test]
    fn hashes_are_argon2id_phc_strings_that_verify() {
        let p = Password::parse("correct horse battery").unwrap();
        let phc = p.hash().unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse batterz", &phc));
    }

    #[test]
    fn tokens_round_trip_and_tampering_is_detected() {
        let t = mint_token(TokenKind::Api);
        let text = t.text.expose_secret().to_owned();
        let presented = PresentedToken::parse(&text).unwrap();
        assert_eq!((presented.kind, presented.token_id), (TokenKind::Api, t.token_id));
        assert!(presented.matches(&t.secret_hash));
        let tampered = PresentedToken::parse(&format!("{}x", &text)).unwrap();
        assert!(!tampered.matches(&t.secret_hash));
        assert!(PresentedToken::parse("garbage").is_none());
        assert_eq!(PresentedToken::parse(mint_token(TokenKind::Agent).text.expose_secret()).unwrap().kind, TokenKind::Agent);
    }
}
