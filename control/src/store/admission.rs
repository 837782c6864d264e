//! Creates judged inside the store's commit ([`Store::create_admitted`]): what ResourceQuota
//! admission writes through. An [`Admission`] sees the objects it charges (its scope: a
//! namespace's ResourceQuotas) as the commit has them, with the charges of every create
//! judged before it, and either charges them or refuses; the creates and the changed
//! charges land in one commit.
//!
//! Why in the commit: admission judged outside it has to read the quotas, charge them and
//! write them back under a compare-and-swap of their revision, so concurrent creates in a
//! namespace race for one object, and must be queued and batched to not retry forever; each
//! batch then waits for the commit before it, and the store sat idle between batches
//! (`shoal-bench quota-writes` measured 17–24% fewer creates/s with a quota). redb's writer
//! is one thread that every write passes through, so it judges each create in turn and
//! charges never conflict. Backends without such a writer (etcd) use
//! [`create_admitted_optimistically`], the compare-and-swap path, and their callers batch.

use std::collections::HashSet;

use serde_json::Value;

use super::{revision_of, Error, Guard, ObjectKey, Result, Store};
use crate::api::object;

/// The objects an admission charges: every object of `resource` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuardScope {
    pub resource: String,
    pub namespace: String,
}

impl GuardScope {
    pub fn new(resource: &str, namespace: &str) -> Self {
        Self {
            resource: resource.into(),
            namespace: namespace.into(),
        }
    }

    /// Whether `key` is one of the scope's objects.
    pub fn holds(&self, key: &ObjectKey) -> bool {
        key.in_scope(&self.resource, Some(&self.namespace))
    }

    pub(super) fn key_of(&self, object: &Value) -> ObjectKey {
        ObjectKey::new(&self.resource, &self.namespace, object::name(object))
    }
}

/// One object of a [`GuardScope`] as the commit has it.
pub struct Guarded {
    pub object: Value,
    /// Set by an admission that changed the guard (in `object` or in its `memo`): it is
    /// written in the create's commit. An admission never changes `metadata.resourceVersion`.
    pub changed: bool,
    /// An admission's working copy of the guard, kept between the creates of one commit: a
    /// quota parsed once and its running total, not parsed and encoded again per create.
    /// Written into `object` by [`Guarded::settle`] before the guard is written.
    pub memo: Option<Box<dyn GuardMemo>>,
}

impl Guarded {
    pub fn new(object: Value) -> Self {
        Self {
            object,
            changed: false,
            memo: None,
        }
    }

    /// Writes what the memo holds into `object`, and drops the memo.
    pub fn settle(&mut self) {
        if let Some(memo) = self.memo.take() {
            memo.settle(&mut self.object);
        }
    }

    /// The guard's object with its memo settled into it.
    pub fn into_settled(mut self) -> Value {
        self.settle();
        self.object
    }
}

/// What an admission keeps of a guard between creates ([`Guarded::memo`]).
pub trait GuardMemo: Send {
    /// Writes what the memo holds (the charges recorded in it) into the guard's object.
    fn settle(self: Box<Self>, object: &mut Value);
    /// For the admission to find its own memo again.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Lists the objects of a resource (the store's name, `pods` or `deployments.apps`) in a
/// namespace as the commit has them: what an admission counts from when a guard has not
/// counted yet (a quota just created or changed).
pub type Lister<'a> = dyn FnMut(&str, &str) -> Vec<Value> + 'a;

/// Judges one create inside the commit that writes it.
pub trait Admission: Send + Sync {
    /// Admits the create, charging it to the guards that count it (changing their objects
    /// and setting `changed`), or refuses it with the reason the client is told, changing
    /// nothing.
    fn admit(&self, guards: &mut [Guarded], list: &mut Lister<'_>) -> Result<(), String>;
}

/// A create and what judges it.
pub struct AdmittedCreate {
    pub key: ObjectKey,
    pub object: Value,
    pub admission: Box<dyn Admission>,
}

/// Why an admitted create was not written.
#[derive(Debug, thiserror::Error)]
pub enum NotCreated {
    /// Its admission refused it: the reason.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] Error),
}

/// The objects of `scope` as `store` has them now, none charged yet: what an admission
/// judged outside a commit starts from.
pub fn stored_guards<S: Store + ?Sized>(store: &S, scope: &GuardScope) -> Result<Vec<Guarded>> {
    Ok(store
        .list(&scope.resource, Some(&scope.namespace))?
        .objects
        .into_iter()
        .map(Guarded::new)
        .collect())
}

/// A [`Lister`] over what `store` has now; a list that fails counts nothing, as in a commit.
pub fn stored_lister<S: Store + ?Sized>(store: &S) -> impl FnMut(&str, &str) -> Vec<Value> + '_ {
    |resource, namespace| {
        store
            .list(resource, Some(namespace))
            .map(|listing| listing.objects)
            .unwrap_or_default()
    }
}

/// How often [`create_admitted_optimistically`] judges and writes again when another write
/// moved one of its guards first.
const ATTEMPTS: usize = 32;

/// [`Store::create_admitted`] for a backend that judges outside its commits: the guards are
/// read, each create judged in turn, and the changed guards written with the admitted
/// creates by [`Store::create_guarded`], each guard under a compare-and-swap of the revision
/// it was read at. When one moved first, all is judged again.
pub async fn create_admitted_optimistically<S: Store + ?Sized>(
    store: &S,
    scope: &GuardScope,
    creates: Vec<AdmittedCreate>,
) -> Result<Vec<Result<Value, NotCreated>>> {
    // A name already taken (or taken twice) fails now, before it is charged: a charge whose
    // create then failed would hold its slot until the quota's next recount.
    let mut seen = HashSet::new();
    let taken: Vec<bool> = creates
        .iter()
        .map(|create| !seen.insert(&create.key) || matches!(store.get(&create.key), Ok(Some(_))))
        .collect();
    for _attempt in 0..ATTEMPTS {
        let mut guards = stored_guards(store, scope)?;
        let mut list = stored_lister(store);
        let verdicts: Vec<Result<(), NotCreated>> = creates
            .iter()
            .zip(&taken)
            .map(|(create, &taken)| {
                if taken {
                    return Err(Error::AlreadyExists(create.key.clone()).into());
                }
                create
                    .admission
                    .admit(&mut guards, &mut list)
                    .map_err(NotCreated::Refused)
            })
            .collect();
        let guard_writes: Vec<Guard> = guards
            .into_iter()
            .filter(|guard| guard.changed)
            .filter_map(|guard| {
                let object = guard.into_settled();
                Some(Guard {
                    key: scope.key_of(&object),
                    precondition: revision_of(&object)?,
                    object,
                })
            })
            .collect();
        let admitted: Vec<(ObjectKey, Value)> = creates
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(create, _)| (create.key.clone(), create.object.clone()))
            .collect();
        let written = if admitted.is_empty() && guard_writes.is_empty() {
            Vec::new()
        } else {
            match store.create_guarded(guard_writes, admitted).await {
                Ok(written) => written,
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut written = written.into_iter();
        return Ok(verdicts
            .into_iter()
            .map(|verdict| {
                verdict?;
                match written.next() {
                    Some(stored) => Ok(stored?),
                    None => Err(Error::Backend("the store lost a create".into()).into()),
                }
            })
            .collect());
    }
    Err(Error::Unavailable(format!(
        "too many concurrent writes to the {} of namespace {:?}; try again",
        scope.resource, scope.namespace
    )))
}
