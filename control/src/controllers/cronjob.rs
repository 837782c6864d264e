//! The CronJob controller: at each time its schedule names (in `spec.timeZone`), a CronJob
//! creates a Job from its template (unless suspended; `concurrencyPolicy` Allow, Forbid or
//! Replace; a start more than `startingDeadlineSeconds` late is skipped), records
//! `lastScheduleTime` and its active Jobs, and keeps `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` finished Jobs.
//!
//! Nothing polls: a reconcile runs when a CronJob or one of its Jobs changes, and requeues
//! itself for the next scheduled time. What to do is decided by [`plan`], a pure function of
//! the CronJob, its Jobs and the time, so the semantics are unit-tested on a fixed clock.

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::controller_of;
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::cron::{Schedule, TOO_MANY_MISSED};
use crate::api::time;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "cronjob-controller", None);
    Reconciler::<CronJob>::new("cronjob", &client)
        .owns::<Job>()
        .run_by_key(move |key| reconcile(client.clone(), recorder.clone(), key))
        .await
}

/// What one reconcile of a CronJob does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A Job to create for this scheduled time.
    pub create_for: Option<DateTime<Utc>>,
    /// Jobs to delete: active ones a `Replace` start supersedes, and finished ones past the
    /// history limits.
    pub delete: Vec<String>,
    /// The `lastScheduleTime` to record.
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// Events to record: (warning?, reason, message).
    pub events: Vec<(bool, &'static str, String)>,
    /// When to look again: the next scheduled time, if the schedule fires again.
    pub next: Option<DateTime<Utc>>,
}

/// Decides what a CronJob needs at `now`, given the Jobs it controls.
pub fn plan(cronjob: &CronJob, owned: &[Job], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    let spec = cronjob.spec.clone().unwrap_or_default();
    let last = cronjob
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(time::instant);
    plan.last_schedule_time = last;
    let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(schedule) => schedule,
        Err(e) => {
            plan.events.push((true, "InvalidSchedule", e.to_string()));
            return plan;
        }
    };
    plan.next = schedule.next_after(now);
    let mut earliest = last
        .or(cronjob
            .metadata
            .creation_timestamp
            .as_ref()
            .map(time::instant))
        .unwrap_or(now);
    // Starts later than the deadline are not made up for.
    if let Some(deadline) = spec
        .starting_deadline_seconds
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
    {
        earliest = earliest.max(deadline);
    }
    let active: Vec<&Job> = owned.iter().filter(|j| finished(j).is_none()).collect();
    if spec.suspend != Some(true) {
        if let Some(missed) = schedule.missed(earliest, now) {
            if missed.count > TOO_MANY_MISSED {
                plan.events.push((
                    true,
                    "TooManyMissedTimes",
                    format!("too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew", missed.count),
                ));
            }
            match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
                "Forbid" if !active.is_empty() => plan.events.push((
                    false,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                )),
                policy => {
                    if policy == "Replace" {
                        plan.delete.extend(active.iter().map(|j| name_of(*j)));
                    }
                    plan.create_for = Some(missed.latest);
                }
            }
            plan.last_schedule_time = Some(missed.latest);
        }
    }
    // History: keep the newest finished Jobs up to the limits.
    for (succeeded, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = owned
            .iter()
            .filter(|j| finished(j) == Some(succeeded))
            .collect();
        let keep = usize::try_from(limit).unwrap_or(0);
        plan.delete.extend(
            done.iter()
                .take(done.len().saturating_sub(keep))
                .map(|j| name_of(*j)),
        );
    }
    plan
}

async fn reconcile(client: Client, recorder: Recorder, key: ObjectKey) -> Result<Action, Error> {
    let Some(cronjob) = client
        .api::<CronJob>(Some(&key.namespace))
        .get_opt(&key.name)
        .await?
    else {
        return Ok(Action::AwaitChange);
    };
    if cronjob.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let jobs_api = client.api::<Job>(Some(&key.namespace));
    let uid = cronjob.metadata.uid.clone().unwrap_or_default();
    let mut owned: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            controller_of(&j.metadata).is_some_and(|o| o.uid == uid)
                && j.metadata.deletion_timestamp.is_none()
        })
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    let now = Utc::now();
    let plan = plan(&cronjob, &owned, now);
    for (warning, reason, message) in &plan.events {
        if *warning {
            recorder.warning(&cronjob, reason, message);
        } else {
            recorder.normal(&cronjob, reason, message);
        }
    }
    for name in &plan.delete {
        match jobs_api.delete(name, &DeleteParams::background()).await {
            Ok(()) => owned.retain(|j| &name_of(j) != name),
            Err(e) if e.is_not_found() => owned.retain(|j| &name_of(j) != name),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(time) = plan.create_for {
        match jobs_api.create(&job_for(&cronjob, time)).await {
            Ok(created) => {
                let message = format!("Created job {}", name_of(&created));
                recorder.normal(&cronjob, "SuccessfulCreate", &message);
                owned.push(created);
            }
            // The Job of this scheduled time exists already (seen in an earlier round).
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }
    write_status(&client, &cronjob, &owned, plan.last_schedule_time).await?;
    Ok(match plan.next {
        Some(next) => Action::RequeueAfter(
            (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .saturating_add(std::time::Duration::from_millis(50)),
        ),
        None => Action::AwaitChange,
    })
}

/// Records the active Jobs and the last schedule time when they changed.
async fn write_status(
    client: &Client,
    cronjob: &CronJob,
    owned: &[Job],
    last_schedule_time: Option<DateTime<Utc>>,
) -> Result<(), Error> {
    let active_refs: Vec<ObjectReference> = owned
        .iter()
        .filter(|j| finished(j).is_none())
        .map(|j| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: j.metadata.name.clone(),
            namespace: j.metadata.namespace.clone(),
            uid: j.metadata.uid.clone(),
            ..Default::default()
        })
        .collect();
    let mut status = json!({"active": active_refs});
    if let Some(time) = last_schedule_time {
        status["lastScheduleTime"] = json!(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let current = serde_json::to_value(&cronjob.status).unwrap_or_default();
    if current.get("active").cloned().unwrap_or(json!([])) != status["active"]
        || current.get("lastScheduleTime") != status.get("lastScheduleTime")
    {
        let namespace = cronjob.metadata.namespace.as_deref().unwrap_or_default();
        client
            .api::<CronJob>(Some(namespace))
            .patch_status(&name_of(cronjob), &json!({"status": status}))
            .await?;
    }
    Ok(())
}

fn name_of<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> String {
    object.metadata().name.clone().unwrap_or_default()
}

fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

fn job_for(cronjob: &CronJob, time: DateTime<Utc>) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let name = name_of(cronjob);
    let meta = template.metadata.unwrap_or_default();
    Job {
        metadata: ObjectMeta {
            // One name per scheduled minute (Kubernetes' naming), so a schedule fires once
            // even if seen twice.
            name: Some(format!("{name}-{}", time.timestamp() / 60)),
            namespace: cronjob.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cronjob.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn cronjob(spec: serde_json::Value, created: &str, last: Option<&str>) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({"spec": {"template": {"spec": {"containers": []}}}});
        serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "default", "uid": "u1", "creationTimestamp": created},
            "spec": spec,
            "status": {"lastScheduleTime": last},
        }))
        .unwrap()
    }

    fn job(name: &str, finished_as: Option<&str>) -> Job {
        let conditions = finished_as
            .map(|c| json!([{"type": c, "status": "True"}]))
            .unwrap_or(json!([]));
        serde_json::from_value(
            json!({"metadata": {"name": name}, "status": {"conditions": conditions}}),
        )
        .unwrap()
    }

    #[test]
    fn starts_the_latest_missed_time_and_requeues_for_the_next() {
        let cj = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            "2026-11-26T08:01:00Z",
            None,
        );
        let plan = plan(&cj, &[], at("2026-11-26T08:12:30Z"));
        assert_eq!(plan.create_for, Some(at("2026-11-26T08:10:00Z")));
        assert_eq!(plan.last_schedule_time, Some(at("2026-11-26T08:10:00Z")));
        assert_eq!(plan.next, Some(at("2026-11-26T08:15:00Z")));
        assert!(plan.events.is_empty());
    }

    #[test]
    fn nothing_due_means_only_a_requeue() {
        let cj = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            "2026-11-26T08:01:00Z",
            Some("2026-11-26T08:10:00Z"),
        );
        let plan = plan(&cj, &[], at("2026-11-26T08:12:30Z"));
        assert_eq!(plan.create_for, None);
        assert_eq!(plan.next, Some(at("2026-11-26T08:15:00Z")));
    }

    #[test]
    fn starting_deadline_skips_late_starts() {
        let spec = json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60});
        let cj = cronjob(spec.clone(), "2026-11-26T07:30:00Z", None);
        assert_eq!(
            plan(&cj, &[], at("2026-11-26T08:00:40Z")).create_for,
            Some(at("2026-11-26T08:00:00Z"))
        );
        assert_eq!(
            plan(&cj, &[], at("2026-11-26T08:01:30Z")).create_for,
            None,
            "90 s late"
        );
        // A deadline too large for any clock is no deadline.
        let huge = cronjob(
            json!({"schedule": "0 * * * *", "startingDeadlineSeconds": i64::MAX}),
            "2026-11-26T07:30:00Z",
            None,
        );
        assert_eq!(
            plan(&huge, &[], at("2026-11-26T08:30:00Z")).create_for,
            Some(at("2026-11-26T08:00:00Z"))
        );
    }

    #[test]
    fn concurrency_policies() {
        let now = at("2026-11-26T08:05:10Z");
        let running = [job("tick-1", None)];
        let with = |policy: &str| {
            cronjob(
                json!({"schedule": "*/5 * * * *", "concurrencyPolicy": policy}),
                "2026-11-26T08:01:00Z",
                None,
            )
        };
        let allow = plan(&with("Allow"), &running, now);
        assert_eq!((allow.create_for.is_some(), allow.delete.len()), (true, 0));
        let forbid = plan(&with("Forbid"), &running, now);
        assert_eq!(forbid.create_for, None);
        assert_eq!(forbid.events[0].1, "JobAlreadyActive");
        assert_eq!(
            forbid.last_schedule_time,
            Some(at("2026-11-26T08:05:00Z")),
            "the missed start is not retried"
        );
        let replace = plan(&with("Replace"), &running, now);
        assert_eq!(
            (replace.create_for.is_some(), replace.delete),
            (true, vec!["tick-1".to_string()])
        );
    }

    #[test]
    fn suspended_history_and_bad_schedules() {
        let suspended = cronjob(
            json!({"schedule": "* * * * *", "suspend": true}),
            "2026-11-26T08:01:00Z",
            None,
        );
        assert_eq!(
            plan(&suspended, &[], at("2026-11-26T08:05:10Z")).create_for,
            None
        );
        let history = [
            job("a", Some("Complete")),
            job("b", Some("Failed")),
            job("c", Some("Complete")),
            job("d", Some("Failed")),
        ];
        let cj = cronjob(
            json!({"schedule": "0 0 1 1 *", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0}),
            "2026-11-26T08:01:00Z",
            None,
        );
        assert_eq!(
            plan(&cj, &history, at("2026-11-26T08:05:10Z")).delete,
            ["a", "b", "d"]
        );
        let bad_zone = cronjob(
            json!({"schedule": "* * * * *", "timeZone": "Nowhere/Else"}),
            "2026-11-26T08:01:00Z",
            None,
        );
        let bad = plan(&bad_zone, &[], at("2026-11-26T08:05:10Z"));
        assert_eq!((bad.create_for, bad.next), (None, None));
        assert_eq!(bad.events[0].2, "unknown time zone Nowhere/Else");
    }

    #[test]
    fn time_zones_move_the_start() {
        let cj = cronjob(
            json!({"schedule": "0 9 * * *", "timeZone": "Europe/Paris"}),
            "2026-11-26T00:00:00Z",
            None,
        );
        assert_eq!(
            plan(&cj, &[], at("2026-11-26T08:00:30Z")).create_for,
            Some(at("2026-11-26T08:00:00Z"))
        );
    }

    #[test]
    fn too_many_missed_times_warn() {
        let cj = cronjob(
            json!({"schedule": "* * * * *"}),
            "2026-11-01T00:00:00Z",
            None,
        );
        let plan = plan(&cj, &[], at("2026-11-26T08:00:30Z"));
        assert_eq!(plan.events[0].1, "TooManyMissedTimes");
        assert_eq!(plan.create_for, Some(at("2026-11-26T08:00:00Z")));
    }
}
