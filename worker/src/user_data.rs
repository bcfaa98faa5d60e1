//! The instance user data: a cloud-init multipart document whose shell part
//! starts the runner's agent (`geonex agent`) with its configuration on every
//! boot; the agent runs the image once per new-data notification. Operators
//! may replace the built-in template with their own file (minijinja syntax).
//!
//! Every value is passed through the `sh` filter (POSIX single-quoting), so a
//! runner name with spaces or quotes cannot break out of the script.
//! [`agent_environment`] reads the agent's settings back out of a rendered
//! document, as the instance would: the simulated cloud starts its agents so.

use std::path::Path;

use minijinja::Environment;
use serde::Serialize;

const BUILT_IN: &str = include_str!("../templates/user-data.sh.j2");

#[derive(Debug, Clone, Serialize)]
pub struct UserDataContext<'a> {
    pub runner_id: &'a str,
    pub runner_name: &'a str,
    pub image_name: &'a str,
    pub s3_output: &'a str,
    pub command_id: &'a str,
    /// The API the agent posts its events to; empty when not configured.
    pub api_url: &'a str,
    /// The SQS queue of new-data notifications; empty when not configured.
    pub queue_url: &'a str,
    /// The runner's agent token: the one secret the user data carries.
    pub agent_token: &'a str,
}

pub struct UserDataTemplate {
    env: Environment<'static>,
}

#[derive(Debug, thiserror::Error)]
#[error("user data template: {0}")]
pub struct TemplateError(String);

/// POSIX shell single-quoting.
fn sh(value: &str) -> String {
    format!("'{}'", value.replace('\'', r#"'"'"'"#))
}

impl UserDataTemplate {
    /// The built-in template, or the operator's file when one is configured.
    pub fn load(path: Option<&Path>) -> Result<Self, TemplateError> {
        let source = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| TemplateError(format!("{}: {e}", p.display())))?,
            None => BUILT_IN.to_owned(),
        };
        let mut env = Environment::new();
        env.add_filter("sh", sh);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("user-data", source).map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self { env })
    }

    pub fn render(&self, ctx: &UserDataContext<'_>) -> Result<String, TemplateError> {
        let t = self.env.get_template("user-data").map_err(|e| TemplateError(e.to_string()))?;
        t.render(ctx).map_err(|e| TemplateError(e.to_string()))
    }
}

/// The agent's settings in a rendered user data document: every line
/// `GEONEX_AGENT__NAME=value` (the environment file the script writes), its value
/// unquoted as the shell would. A template that writes no such lines gives none.
pub fn agent_environment(user_data: &str) -> Vec<(String, String)> {
    user_data
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once('=')?;
            let valid = name.starts_with("GEONEX_AGENT__") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            valid.then(|| (name.to_owned(), unquote(value)))
        })
        .collect()
}

/// Undoes shell quoting: single-quoted runs are literal, double-quoted ones and
/// bare words take backslash escapes (so the output of [`sh`] comes back whole).
fn unquote(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => out.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => out.extend(chars.next()),
                        c => out.push(c),
                    }
                }
            }
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_settings_come_back_out_of_the_rendered_user_data() {
        let t = UserDataTemplate::load(None).unwrap();
        let awkward = "it's \"prod\" $HOME `x` \\ ;";
        let out = t
            .render(&UserDataContext {
                runner_id: "r-1",
                runner_name: awkward,
                image_name: awkward,
                s3_output: "s3://geonex/GO16_ABI15",
                command_id: "c-1",
                api_url: "http://127.0.0.1:8080",
                queue_url: "",
                agent_token: "gnxa_x_y",
            })
            .unwrap();
        let env: std::collections::HashMap<String, String> = agent_environment(&out).into_iter().collect();
        assert_eq!(env["GEONEX_AGENT__RUNNER_ID"], "r-1");
        assert_eq!(env["GEONEX_AGENT__IMAGE_NAME"], awkward);
        assert_eq!(env["GEONEX_AGENT__S3_OUTPUT"], "s3://geonex/GO16_ABI15");
        assert_eq!(env["GEONEX_AGENT__API_URL"], "http://127.0.0.1:8080");
        assert_eq!(env["GEONEX_AGENT__QUEUE_URL"], "");
        assert_eq!(env["GEONEX_AGENT__TOKEN"], "gnxa_x_y");
        // The instance id is appended on the instance itself, from its metadata.
        assert!(!env.contains_key("GEONEX_AGENT__INSTANCE_ID"), "{env:?}");
        assert_eq!(unquote(r#"a\ b"c\"d"'e'"#), "a bc\"de");
        assert!(agent_environment("#!/bin/sh\necho hello\n").is_empty());
    }

    #[test]
    fn built_in_template_runs_the_image_with_quoted_values() {
        let t = UserDataTemplate::load(None).unwrap();
        let out = t
            .render(&UserDataContext {
                runner_id: "r-1",
                runner_name: "It's prod; rm -rf /",
                image_name: "geonex/active_fire_go16abi15:1.5",
                s3_output: "s3://geonex/GO16_ABI15",
                command_id: "c-1",
                api_url: "https://geonex.example.org",
                queue_url: "https://sqs.us-east-1.amazonaws.com/1/goes",
                agent_token: "gnxa_x_y",
            })
            .unwrap();
        assert!(out.contains("IMAGE='geonex/active_fire_go16abi15:1.5'"));
        assert!(out.contains("S3_OUTPUT='s3://geonex/GO16_ABI15'"));
        assert!(out.contains(r#"RUNNER_NAME='It'"'"'s prod; rm -rf /'"#));
        assert!(out.contains("GEONEX_AGENT__TOKEN='gnxa_x_y'"));
        assert!(out.contains("GEONEX_AGENT__API_URL='https://geonex.example.org'"));
        assert!(out.contains("geonex agent"));
        assert!(out.contains("scripts-user, always"));
    }
}
