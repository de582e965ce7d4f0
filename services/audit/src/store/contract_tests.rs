//! One contract for every [`EventStore`]: each test runs against SQLite
//! always and against Postgres when it is reachable (required under CI=true).

use std::collections::BTreeSet;
use std::sync::Arc;

use coffer_platform::db::testing;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn sqlite_store(
    directory: &tempfile::TempDir,
) -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    Ok(event_store(
        testing::sqlite_pool(directory.path(), "audit.db", &MIGRATIONS).await?,
    ))
}

async fn postgres_store() -> Result<Option<Arc<dyn EventStore>>, Box<dyn std::error::Error>> {
    Ok(testing::postgres_pool("audit_contract", &MIGRATIONS)
        .await?
        .map(event_store))
}

coffer_platform::store_contract_tests!(
    events_round_trip_and_duplicates_are_skipped,
    lookups_filter_by_each_attribute_and_time,
    pages_return_every_event_exactly_once_newest_first,
    a_large_batch_stores_each_new_event_once_with_its_own_resources,
    retention_removes_only_old_events_with_their_resources,
    a_correction_replaces_the_record_stored_under_its_id,
    an_id_twice_in_one_batch_is_reported_at_the_copy_stored,
);

fn event(id: &str, time_ms: i64, name: &str) -> StoredEvent {
    StoredEvent {
        seq: 0,
        event_id: id.to_owned(),
        event_time_ms: time_ms,
        event_source: "kms.coffer.internal".into(),
        event_name: name.to_owned(),
        read_only: name.starts_with("Describe") || name.starts_with("List"),
        username: Some("alice".into()),
        account_id: Some("111122223333".into()),
        trusted: true,
        corrects: false,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        received_at_ms: 0,
        record: format!(
            r#"{{"eventID":"{id}","eventName":"{name}","note":"line\nbreak \"quoted\"","resources":[{{"type":"AWS::KMS::Key","ARN":"arn:coffer:kms:eu-west-1:111122223333:key/{id}"}}]}}"#
        ),
        resources: vec![(
            "AWS::KMS::Key".into(),
            format!("arn:coffer:kms:eu-west-1:111122223333:key/{id}"),
        )],
    }
}

async fn events_round_trip_and_duplicates_are_skipped(store: &dyn EventStore) -> TestResult {
    let first = event("e1", 1_000, "Encrypt");
    let mut untrusted = event("e2", 2_000, "Decrypt");
    untrusted.trusted = false;
    untrusted.username = None;
    untrusted.trace_id = None;
    assert_eq!(
        store
            .insert_events(&[first.clone(), untrusted.clone()], 5_000)
            .await?,
        vec![0, 1]
    );
    // At-least-once delivery: the same ids again change nothing.
    let mut replay = first.clone();
    replay.record = "{\"different\":true}".into();
    assert_eq!(
        store
            .insert_events(&[replay, untrusted.clone()], 6_000)
            .await?,
        Vec::<usize>::new()
    );

    let stored = store.get_event("e1").await?.ok_or("e1 missing")?;
    assert!(stored.seq > 0);
    assert_eq!(stored.record, first.record);
    assert_eq!(stored.received_at_ms, 5_000);
    assert_eq!(stored.event_name, "Encrypt");
    assert!(stored.trusted);
    let other = store.get_event("e2").await?.ok_or("e2 missing")?;
    assert!(!other.trusted);
    assert_eq!(other.username, None);
    assert!(other.seq > stored.seq, "seq follows arrival");
    assert_eq!(store.get_event("e3").await?, None);
    // Only a trusted event's resources are indexed.
    let by_resource = |id: &str| {
        all_time(Some(LookupAttribute::ResourceName(format!(
            "arn:coffer:kms:eu-west-1:111122223333:key/{id}"
        ))))
    };
    assert_eq!(ids(&store.lookup(&by_resource("e1")).await?), vec!["e1"]);
    assert!(store.lookup(&by_resource("e2")).await?.is_empty());
    Ok(())
}

fn all_time(attribute: Option<LookupAttribute>) -> LookupQuery {
    LookupQuery {
        account: None,
        attribute,
        start_ms: 0,
        end_ms: i64::MAX,
        after: None,
        limit: 50,
    }
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|event| event.event_id.clone()).collect()
}

async fn lookups_filter_by_each_attribute_and_time(store: &dyn EventStore) -> TestResult {
    let mut bob = event("b1", 3_000, "DescribeKey");
    bob.username = Some("bob".into());
    bob.event_source = "secretsmanager.coffer.internal".into();
    bob.resources = vec![("AWS::SecretsManager::Secret".into(), "arn:secret".into())];
    bob.record = r#"{"eventID":"b1","resources":[{"type":"AWS::SecretsManager::Secret","ARN":"arn:secret"},"not an object",{"type":1,"ARN":"x"}]}"#.into();
    store
        .insert_events(
            &[
                event("a1", 1_000, "Encrypt"),
                event("a2", 2_000, "Decrypt"),
                bob,
            ],
            0,
        )
        .await?;
    let cases = [
        (None, vec!["b1", "a2", "a1"]),
        (Some(LookupAttribute::EventId("a2".into())), vec!["a2"]),
        (
            Some(LookupAttribute::EventName("Encrypt".into())),
            vec!["a1"],
        ),
        (Some(LookupAttribute::ReadOnly(true)), vec!["b1"]),
        (Some(LookupAttribute::ReadOnly(false)), vec!["a2", "a1"]),
        (Some(LookupAttribute::Username("bob".into())), vec!["b1"]),
        (
            Some(LookupAttribute::EventSource("kms.coffer.internal".into())),
            vec!["a2", "a1"],
        ),
        (
            Some(LookupAttribute::ResourceType(
                "AWS::SecretsManager::Secret".into(),
            )),
            vec!["b1"],
        ),
        (
            Some(LookupAttribute::ResourceName(
                "arn:coffer:kms:eu-west-1:111122223333:key/a1".into(),
            )),
            vec!["a1"],
        ),
        // A resource whose type is not a string is not indexed.
        (Some(LookupAttribute::ResourceName("x".into())), vec![]),
        (Some(LookupAttribute::EventName("Nothing".into())), vec![]),
        // Values are literal: wildcards and SQL never widen a match.
        (Some(LookupAttribute::Username("%".into())), vec![]),
        (
            Some(LookupAttribute::Username("' OR '1'='1".into())),
            vec![],
        ),
    ];
    for (attribute, expected) in cases {
        let found = store.lookup(&all_time(attribute.clone())).await?;
        assert_eq!(ids(&found), expected, "{attribute:?}");
    }
    let window = LookupQuery {
        account: None,
        start_ms: 1_500,
        end_ms: 2_000,
        ..all_time(None)
    };
    assert_eq!(ids(&store.lookup(&window).await?), vec!["a2"]);
    Ok(())
}

async fn a_large_batch_stores_each_new_event_once_with_its_own_resources(
    store: &dyn EventStore,
) -> TestResult {
    // More than two full statements' worth, ending in smaller ones, with two
    // events already stored: positions and resources must stay with their
    // own events across every statement of the batch.
    let events: Vec<StoredEvent> = (0..1_100)
        .map(|index| event(&format!("x{index:04}"), 1_000 + index, "Encrypt"))
        .collect();
    let stored_before = [5_usize, 700];
    for &index in &stored_before {
        let earlier = events.get(index).ok_or("no such event")?;
        store
            .insert_events(std::slice::from_ref(earlier), 0)
            .await?;
    }
    let fresh = store.insert_events(&events, 0).await?;
    let expected: Vec<usize> = (0..1_100)
        .filter(|index| !stored_before.contains(index))
        .collect();
    assert_eq!(fresh, expected);
    assert_eq!(store.count_events("Encrypt").await?, 1_100);
    for index in [0_usize, 5, 511, 512, 700, 1_023, 1_024, 1_099] {
        let id = format!("x{index:04}");
        let named = store
            .lookup(&all_time(Some(LookupAttribute::ResourceName(format!(
                "arn:coffer:kms:eu-west-1:111122223333:key/{id}"
            )))))
            .await?;
        assert_eq!(ids(&named), vec![id], "resource of event {index}");
    }
    let keys = store
        .lookup(&LookupQuery {
            limit: 50,
            ..all_time(Some(LookupAttribute::ResourceType("AWS::KMS::Key".into())))
        })
        .await?;
    assert_eq!(keys.len(), 50, "a full page of events naming a key");
    Ok(())
}

async fn pages_return_every_event_exactly_once_newest_first(store: &dyn EventStore) -> TestResult {
    // Many events share a timestamp: the cursor must break ties. Every third
    // is another account's, which a lookup for one account never returns.
    let events: Vec<StoredEvent> = (0..125)
        .map(|index| {
            let mut stored = event(
                &format!("p{index:03}"),
                1_000 + (index / 10) * 10,
                "Encrypt",
            );
            if index % 3 == 0 {
                stored.account_id = Some("444455556666".into());
            }
            stored
        })
        .collect();
    for chunk in events.chunks(40) {
        store.insert_events(chunk, 0).await?;
    }
    for (account, expected) in [(None, 125), (Some("111122223333"), 83)] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .lookup(&LookupQuery {
                    account: account.map(str::to_owned),
                    after,
                    limit: 50,
                    ..all_time(None)
                })
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(LookupCursor {
                event_time_ms: last.event_time_ms,
                event_id: last.event_id.clone(),
            });
            seen.extend(page.iter().map(|event| {
                (
                    event.event_time_ms,
                    event.event_id.clone(),
                    event.account_id.clone(),
                )
            }));
            if page.len() < 50 {
                break;
            }
        }
        assert_eq!(seen.len(), expected, "{account:?}");
        let unique: BTreeSet<&String> = seen.iter().map(|(_, id, _)| id).collect();
        assert_eq!(unique.len(), expected, "every event exactly once");
        assert!(
            seen.windows(2)
                .all(|pair| (pair[0].0, &pair[0].1) > (pair[1].0, &pair[1].1)),
            "newest first, ties by descending event id"
        );
        if let Some(account) = account {
            assert!(seen.iter().all(|(_, _, of)| of.as_deref() == Some(account)));
        }
    }
    Ok(())
}

async fn retention_removes_only_old_events_with_their_resources(
    store: &dyn EventStore,
) -> TestResult {
    store
        .insert_events(
            &[
                event("old1", 1_000, "Encrypt"),
                event("old2", 2_000, "Encrypt"),
                event("new", 9_000, "Encrypt"),
            ],
            0,
        )
        .await?;
    assert_eq!(store.delete_older_than(5_000, 1).await?, 1);
    assert_eq!(store.get_event("old1").await?, None);
    assert!(store.get_event("old2").await?.is_some());
    assert_eq!(store.delete_older_than(5_000, 100).await?, 1);
    assert_eq!(store.delete_older_than(5_000, 100).await?, 0);
    assert_eq!(ids(&store.lookup(&all_time(None)).await?), vec!["new"]);
    let by_resource = store
        .lookup(&all_time(Some(LookupAttribute::ResourceName(
            "arn:coffer:kms:eu-west-1:111122223333:key/old2".into(),
        ))))
        .await?;
    assert!(by_resource.is_empty());
    Ok(())
}

async fn a_correction_replaces_the_record_stored_under_its_id(
    store: &dyn EventStore,
) -> TestResult {
    let original = event("withheld", 1_000, "Decrypt");
    let mut correction = original.clone();
    correction.corrects = true;
    correction.record = original.record.replace(
        r#""eventName":"Decrypt""#,
        r#""eventName":"Decrypt","errorCode":"ServiceUnavailableException","answerWithheld":true"#,
    );
    assert_ne!(correction.record, original.record);
    assert_eq!(
        store
            .insert_events(std::slice::from_ref(&original), 0)
            .await?,
        vec![0]
    );
    // Not new (rules and subscribers saw the event already), but replaced.
    assert!(
        store
            .insert_events(std::slice::from_ref(&correction), 0)
            .await?
            .is_empty()
    );
    let stored = store.get_event("withheld").await?.ok_or("missing")?;
    assert_eq!(stored.record, correction.record);
    // The first event, delivered again later, does not undo it.
    assert!(
        store
            .insert_events(std::slice::from_ref(&original), 0)
            .await?
            .is_empty()
    );
    let stored = store.get_event("withheld").await?.ok_or("missing")?;
    assert_eq!(stored.record, correction.record);
    assert_eq!(ids(&store.lookup(&all_time(None)).await?), vec!["withheld"]);
    // A correction whose first event never arrived is stored as new; an
    // untrusted event cannot correct anything.
    let mut lone = event("lone", 2_000, "Decrypt");
    lone.corrects = true;
    assert_eq!(store.insert_events(&[lone], 0).await?, vec![0]);
    let mut forged = correction.clone();
    forged.trusted = false;
    forged.record = "{}".into();
    store.insert_events(&[forged], 0).await?;
    let stored = store.get_event("withheld").await?.ok_or("missing")?;
    assert_eq!(stored.record, correction.record);
    Ok(())
}

async fn an_id_twice_in_one_batch_is_reported_at_the_copy_stored(
    store: &dyn EventStore,
) -> TestResult {
    // The insert keeps the first copy of an id; the position reported (what
    // rules route) and the resources indexed must be that copy's too.
    let first = event("twice", 1_000, "Decrypt");
    let mut second = event("twice", 1_000, "Decrypt");
    second.record = r#"{"eventID":"twice","second":true}"#.into();
    second.resources = vec![(
        "AWS::KMS::Key".into(),
        "arn:coffer:kms:eu-west-1:111122223333:key/other".into(),
    )];
    assert_eq!(
        store.insert_events(&[first.clone(), second], 0).await?,
        vec![0]
    );
    let stored = store.get_event("twice").await?.ok_or("missing")?;
    assert_eq!(stored.record, first.record);
    let by_resource = |name: &str| {
        all_time(Some(LookupAttribute::ResourceName(format!(
            "arn:coffer:kms:eu-west-1:111122223333:key/{name}"
        ))))
    };
    assert_eq!(
        ids(&store.lookup(&by_resource("twice")).await?),
        vec!["twice"]
    );
    assert!(store.lookup(&by_resource("other")).await?.is_empty());
    Ok(())
}

/// On Postgres, a failed delivery recorded while a DeleteRule has removed
/// the rule's targets but not yet committed waits for it, and is not left
/// behind for a rule made again under the name (SQLite has one writer, and
/// the race cannot happen there).
#[tokio::test]
async fn a_failure_recorded_as_its_rule_is_deleted_is_not_left_behind() -> TestResult {
    let Some(pool) = testing::postgres_pool("audit_rules", &MIGRATIONS).await? else {
        return Ok(());
    };
    let DbPool::Postgres(raw) = pool.clone() else {
        return Err("not a Postgres pool".into());
    };
    let store = audit_store(pool);
    let (account, name) = ("111122223333", "creates");
    let rule = RuleRecord {
        account_id: account.into(),
        name: name.into(),
        event_pattern: r#"{"source":["coffer.kms"]}"#.into(),
        enabled: true,
        read_only_events: false,
        description: String::new(),
        created_by: "alice".into(),
        created_at_ms: 0,
    };
    store.put_rule(&rule, 100).await?;
    let target = TargetRecord {
        account_id: account.into(),
        rule_name: name.into(),
        target_id: "hook".into(),
        endpoint: "https://hooks.example/in".into(),
        signing_secret: b"0123456789abcdef".to_vec(),
        max_retries: 0,
        max_event_age_s: 60,
    };
    store.put_targets(account, name, &[target], 5).await?;
    // DeleteRule's statements, its commit held back.
    let mut deleting = raw.begin().await?;
    for statement in [
        "UPDATE rules SET enabled = enabled WHERE account_id = $1 AND name = $2",
        "DELETE FROM rule_targets WHERE account_id = $1 AND rule_name = $2",
        "DELETE FROM failed_deliveries WHERE account_id = $1 AND rule_name = $2",
        "DELETE FROM rules WHERE account_id = $1 AND name = $2",
    ] {
        sqlx::query(statement)
            .bind(account)
            .bind(name)
            .execute(&mut *deleting)
            .await?;
    }
    let recording = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .record_failed_delivery(&FailedDeliveryRecord {
                    seq: 0,
                    account_id: account.into(),
                    rule_name: name.into(),
                    target_id: "hook".into(),
                    event_id: "event-1".into(),
                    attempts: 1,
                    last_error: "the endpoint answered HTTP 500".into(),
                    failed_at_ms: 1,
                })
                .await
        }
    });
    // The recording waits for the rule's lock (before, its insert went
    // ahead, seeing the target the deletion had not yet committed away).
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE 'UPDATE rules SET enabled = enabled%'",
            )
            .fetch_one(&raw)
            .await?;
            if waiting > 0 {
                return Ok::<(), sqlx::Error>(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| "the recording never waited for the rule's lock")??;
    deleting.commit().await?;
    recording.await??;
    store.put_rule(&rule, 100).await?;
    assert_eq!(
        store.list_failed_deliveries(account, name, 0, 10).await?,
        []
    );
    Ok(())
}
