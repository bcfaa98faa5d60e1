//! Records from rows, for the tables several ports read: commands and runners.
//! Each port module decodes its own tables the same way, once, through [`Row`].

use crate::cost::PurchaseOption;
use crate::domain::{Action, CommandStatus, DesiredState, ObservedState};
use crate::store::sql::Row;
use crate::store::commands::{CommandRecord, RunnerRecord};
use crate::store::error::StoreError;

/// The command columns every statement returning commands selects.
macro_rules! command_columns {
    () => {
        "command_id, seq, action, runner_id, params, status, attempts, max_attempts, last_error, result, \
         requested_by, trace_id, created_at, updated_at, started_at, finished_at, next_attempt_at, \
         lease_holder, claimed_at, lease_until, waiting_for, budget_op, budget_at, budget_ticket"
    };
}

macro_rules! runner_columns {
    () => {
        "runner_id, runner_name, instance_type, image_name, s3_output, instance_id, desired_state, \
         observed_state, last_error, last_heartbeat_at, observed_at, created_at, updated_at, owner, purchase_option, \
         fallback_instance_types, idle_stop_after_secs, launched_instance_type, launched_purchase_option"
    };
}

pub(crate) use {command_columns, runner_columns};

/// How a command status is stored: waiting is retrying with `waiting_for` set.
/// Returns the stored status and whether `waiting_for` must be set (or `None`
/// when it does not matter).
pub fn stored_status(status: CommandStatus) -> (&'static str, Option<bool>) {
    match status {
        CommandStatus::Waiting => (CommandStatus::Retrying.as_str(), Some(true)),
        CommandStatus::Retrying => (CommandStatus::Retrying.as_str(), Some(false)),
        other => (other.as_str(), None),
    }
}

/// A stored enum value, or why it cannot be read.
pub fn parsed<T>(what: &str, raw: String, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(&raw).ok_or_else(|| StoreError::corrupt(what, raw))
}

pub fn command(r: &impl Row) -> Result<CommandRecord, StoreError> {
    let waiting_for = r.opt_text("waiting_for")?;
    // A waiting command is stored as retrying with what it waits for.
    let status = match parsed("status", r.text("status")?, CommandStatus::parse)? {
        CommandStatus::Retrying if waiting_for.is_some() => CommandStatus::Waiting,
        s => s,
    };
    Ok(CommandRecord {
        command_id: r.uuid("command_id")?,
        seq: r.int("seq")?,
        action: parsed("action", r.text("action")?, Action::parse)?,
        runner_id: r.opt_text("runner_id")?,
        status,
        attempts: r.i32("attempts")?,
        max_attempts: r.i32("max_attempts")?,
        last_error: r.opt_text("last_error")?,
        requested_by: r.text("requested_by")?,
        trace_id: r.text("trace_id")?,
        params: r.json("params")?,
        result: r.opt_json("result")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
        next_attempt_at: r.opt_time("next_attempt_at")?,
        lease_holder: r.opt_uuid("lease_holder")?,
        claimed_at: r.opt_time("claimed_at")?,
        lease_until: r.opt_time("lease_until")?,
        waiting_for,
        budget_op: r.opt_text("budget_op")?,
        budget_at: r.opt_time("budget_at")?,
        budget_ticket: r.opt_float("budget_ticket")?,
    })
}

pub fn runner(r: &impl Row) -> Result<RunnerRecord, StoreError> {
    Ok(RunnerRecord {
        runner_id: r.text("runner_id")?,
        runner_name: r.text("runner_name")?,
        instance_type: r.text("instance_type")?,
        image_name: r.text("image_name")?,
        s3_output: r.text("s3_output")?,
        instance_id: r.opt_text("instance_id")?,
        desired_state: parsed("desired_state", r.text("desired_state")?, DesiredState::parse)?,
        observed_state: parsed("observed_state", r.text("observed_state")?, ObservedState::parse)?,
        last_error: r.opt_text("last_error")?,
        last_heartbeat_at: r.opt_time("last_heartbeat_at")?,
        observed_at: r.opt_time("observed_at")?,
        owner: r.opt_text("owner")?,
        purchase_option: parsed("purchase_option", r.text("purchase_option")?, PurchaseOption::parse)?,
        fallback_instance_types: r
            .text("fallback_instance_types")?
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        idle_stop_after_secs: r.opt_int("idle_stop_after_secs")?,
        launched_instance_type: r.opt_text("launched_instance_type")?,
        launched_purchase_option: r
            .opt_text("launched_purchase_option")?
            .map(|p| parsed("launched_purchase_option", p, PurchaseOption::parse))
            .transpose()?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

pub fn commands(rows: &[impl Row]) -> Result<Vec<CommandRecord>, StoreError> {
    rows.iter().map(command).collect()
}

pub fn runners(rows: &[impl Row]) -> Result<Vec<RunnerRecord>, StoreError> {
    rows.iter().map(runner).collect()
}
