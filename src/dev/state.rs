//! The `dev` state dir. Secrets are laid out like a mounted Secret volume,
//! `<dir>/<namespace>/<secret>/<key>`, so a workload example can point at it. Bookkeeping
//! that a cluster keeps in the API (statuses, which object owns which Secret, TokenGrant
//! and AccessToken uids, the operator's signing keys, the RFC 7009 deny list) lives under `<dir>/.s2s/`, a name
//! no namespace can have.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{AccessTokenStatus, ServiceAccountStatus, TokenGrantStatus};
use crate::signing_keys::{self, Policy};
use crate::token::KeySet;
use crate::token::deny::{expired_keys, jti_key};

/// The operator's own namespace in `dev`, where the signing keys Secret lives.
pub const OPERATOR_NAMESPACE: &str = "s2s-system";

/// The owner of the signing keys Secret: the operator itself, never an orphan.
pub const OPERATOR_OWNER: &str = "s2s-operator";

/// The kind folder of ServiceAccounts under `.s2s/status/`.
pub const SERVICE_ACCOUNTS: &str = "serviceaccounts";

/// The kind folder of TokenGrants under `.s2s/status/` and `.s2s/uids/`.
pub const TOKEN_GRANTS: &str = "tokengrants";

/// The kind folder of AccessTokens under `.s2s/status/` and `.s2s/uids/`.
pub const ACCESS_TOKENS: &str = "accesstokens";

/// A state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) a state dir.
    pub fn open(root: &Path) -> io::Result<Self> {
        create_private_dir(&root.join(".s2s"))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where a Secret's files are.
    pub fn secret_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(name)
    }

    /// A Secret's data, if it exists.
    pub fn read_secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let dir = self.secret_dir(namespace, name);
        let entries = std::fs::read_dir(&dir).ok()?;
        let mut data = BTreeMap::new();
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if key.starts_with(".tmp-") {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(e.path()) {
                data.insert(key, v);
            }
        }
        Some(data)
    }

    /// Writes a Secret's data (only if it differs), recording `owner` as its controller.
    /// Each key is replaced atomically; keys not in `data` are removed.
    pub fn write_secret(
        &self,
        namespace: &str,
        name: &str,
        owner: &str,
        data: &BTreeMap<String, String>,
    ) -> io::Result<()> {
        if self.read_secret(namespace, name).as_ref() == Some(data)
            && self.owner_of(namespace, name).as_deref() == Some(owner)
        {
            return Ok(());
        }
        let dir = self.secret_dir(namespace, name);
        create_private_dir(&dir)?;
        for (k, v) in data {
            write_private(&dir.join(k), v.as_bytes())?;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if !data.contains_key(e.file_name().to_string_lossy().as_ref()) {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        let mut owners = self.owners();
        owners.insert(format!("{namespace}/{name}"), owner.to_owned());
        write_private(
            &self.root.join(".s2s/owners.json"),
            &serde_json::to_vec_pretty(&owners).expect("JSON"),
        )
    }

    fn owners(&self) -> BTreeMap<String, String> {
        std::fs::read(self.root.join(".s2s/owners.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Deletes the Secrets whose owner is not in `live` (nor the operator), as the garbage
    /// collector deletes a cluster's Secrets with their owner. Returns their `namespace/name`.
    pub fn remove_orphaned_secrets(&self, live: &BTreeSet<String>) -> io::Result<Vec<String>> {
        let mut owners = self.owners();
        let orphans: Vec<String> = owners
            .iter()
            .filter(|(_, owner)| owner.as_str() != OPERATOR_OWNER && !live.contains(*owner))
            .map(|(secret, _)| secret.clone())
            .collect();
        for secret in &orphans {
            let (namespace, name) = secret.split_once('/').unwrap_or_default();
            match std::fs::remove_dir_all(self.secret_dir(namespace, name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            owners.remove(secret);
        }
        if !orphans.is_empty() {
            write_private(
                &self.root.join(".s2s/owners.json"),
                &serde_json::to_vec_pretty(&owners).expect("JSON"),
            )?;
        }
        Ok(orphans)
    }

    /// Deletes the saved statuses of objects of `kind` (its plural) not in `present`
    /// (`namespace/name`): an object that comes back starts afresh, as one created again.
    pub fn remove_statuses_except(&self, kind: &str, present: &BTreeSet<String>) -> io::Result<()> {
        let dir = self.root.join(".s2s/status").join(kind);
        let Ok(namespaces) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for ns in namespaces.flatten() {
            let namespace = ns.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(ns.path())?.flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                let Some(name) = file.strip_suffix(".json") else {
                    continue;
                };
                if !present.contains(&format!("{namespace}/{name}")) {
                    std::fs::remove_file(f.path())?;
                }
            }
        }
        Ok(())
    }

    /// `namespace/name` of the object that controls a Secret.
    pub fn owner_of(&self, namespace: &str, name: &str) -> Option<String> {
        self.owners().remove(&format!("{namespace}/{name}"))
    }

    /// A ServiceAccount's saved status.
    pub fn read_status(&self, namespace: &str, name: &str) -> Option<ServiceAccountStatus> {
        self.read_object_status(SERVICE_ACCOUNTS, namespace, name)
    }

    /// Saves a ServiceAccount's status.
    pub fn write_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ServiceAccountStatus,
    ) -> io::Result<()> {
        self.write_object_status(SERVICE_ACCOUNTS, namespace, name, status)
    }
}

impl StateDir {
    /// Where the status of an object of `kind` (its plural, e.g. `tokengrants`) is saved.
    fn object_status_path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join(".s2s/status")
            .join(kind)
            .join(namespace)
            .join(format!("{name}.json"))
    }

    fn read_object_status<T: DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<T> {
        let path = self.object_status_path(kind, namespace, name);
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn write_object_status<T: Serialize>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        status: &T,
    ) -> io::Result<()> {
        let path = self.object_status_path(kind, namespace, name);
        create_private_dir(path.parent().expect("has a parent"))?;
        write_private(
            &path,
            &serde_json::to_vec_pretty(status).expect("status serializes"),
        )
    }

    /// A TokenGrant's saved status.
    pub fn read_grant_status(&self, namespace: &str, name: &str) -> Option<TokenGrantStatus> {
        self.read_object_status(TOKEN_GRANTS, namespace, name)
    }

    /// Saves a TokenGrant's status.
    pub fn write_grant_status(
        &self,
        namespace: &str,
        name: &str,
        status: &TokenGrantStatus,
    ) -> io::Result<()> {
        self.write_object_status(TOKEN_GRANTS, namespace, name, status)
    }

    /// An AccessToken's saved status.
    pub fn read_access_token_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<AccessTokenStatus> {
        self.read_object_status(ACCESS_TOKENS, namespace, name)
    }

    /// Saves an AccessToken's status.
    pub fn write_access_token_status(
        &self,
        namespace: &str,
        name: &str,
        status: &AccessTokenStatus,
    ) -> io::Result<()> {
        self.write_object_status(ACCESS_TOKENS, namespace, name, status)
    }
}

impl StateDir {
    fn uids_path(&self, kind: &str) -> PathBuf {
        self.root.join(".s2s/uids").join(format!("{kind}.json"))
    }

    /// The uid of every object of `kind` (its plural, e.g. `tokengrants`) in `present`
    /// (`namespace/name`), as the API server would keep `metadata.uid`: the one saved for it,
    /// or a new one from `new_uid` for an object not seen before. Tokens name their grant by
    /// uid, so an object no longer present is forgotten (when `forget_missing`) and gets a new
    /// uid if it comes back: its old tokens stay void, as for an object deleted and created
    /// again. Saved only when something changed; the second value says whether saving worked
    /// (the uids hold for this pass either way).
    pub fn uids(
        &self,
        kind: &str,
        present: &[String],
        forget_missing: bool,
        mut new_uid: impl FnMut() -> String,
    ) -> (BTreeMap<String, String>, io::Result<()>) {
        let path = self.uids_path(kind);
        let saved: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut uids = saved.clone();
        if forget_missing {
            uids.retain(|k, _| present.contains(k));
        }
        for key in present {
            uids.entry(key.clone()).or_insert_with(&mut new_uid);
        }
        let saved_ok = if uids == saved {
            Ok(())
        } else {
            create_private_dir(path.parent().expect("has a parent")).and_then(|()| {
                write_private(
                    &path,
                    &serde_json::to_vec_pretty(&uids).expect("uids serialize"),
                )
            })
        };
        (uids, saved_ok)
    }
}

impl StateDir {
    /// The deny list, in the same key → value form as the cluster's ConfigMap
    /// (`crate::revocation`), so the token core reads both the same way.
    fn revocations_path(&self) -> PathBuf {
        self.root.join(".s2s/revocations.json")
    }

    fn read_revocations(&self) -> BTreeMap<String, String> {
        std::fs::read(self.revocations_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_revocations(&self, data: &BTreeMap<String, String>) -> io::Result<()> {
        write_private(
            &self.revocations_path(),
            &serde_json::to_vec_pretty(data).expect("revocations serialize"),
        )
    }

    /// The saved revocations that can still match a live token. Expired ones are dropped
    /// from the file (saved only when some were), so it stays as small as the live tokens.
    pub fn revocations(&self, now: u64) -> io::Result<BTreeMap<String, String>> {
        let mut data = self.read_revocations();
        let expired = expired_keys(&data, now);
        if !expired.is_empty() {
            for k in &expired {
                data.remove(k);
            }
            self.write_revocations(&data)?;
        }
        Ok(data)
    }

    /// Saves a revoked token until its `exp`, pruning expired entries on the way. Callers
    /// serialize calls (read, change, write); the write itself is atomic.
    pub fn revoke_jti(&self, jti: &str, exp: u64, now: u64) -> io::Result<()> {
        let key = jti_key(jti).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a token id we never issue")
        })?;
        let mut data = self.read_revocations();
        for k in expired_keys(&data, now) {
            data.remove(&k);
        }
        data.insert(key, exp.to_string());
        self.write_revocations(&data)
    }
}

/// Loads the signing keys, running their lifecycle plan and saving it if it changed.
pub fn load_signing_keys(state: &StateDir, policy: &Policy, now: u64) -> Result<KeySet, String> {
    let name = signing_keys::SECRET_NAME;
    let data = state
        .read_secret(OPERATOR_NAMESPACE, name)
        .unwrap_or_default();
    let records = signing_keys::from_data(&data).map_err(|e| e.to_string())?;
    let (records, changed) = signing_keys::plan(records, policy, now, crate::crypto::generate_key)
        .map_err(|e| e.to_string())?;
    if changed {
        state
            .write_secret(
                OPERATOR_NAMESPACE,
                name,
                OPERATOR_OWNER,
                &signing_keys::to_data(&records),
            )
            .map_err(|e| e.to_string())?;
    }
    let (signer, published) = signing_keys::keys_at(&records, now).map_err(|e| e.to_string())?;
    KeySet::new(signer, published).map_err(|e| e.to_string())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a file readable by its owner only, atomically (temporary file, then rename).
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("has a parent");
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().expect("has a name").to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::deny::DenyList;

    #[test]
    fn revocations_persist_and_expired_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.revoke_jti("old", 100, 50).unwrap();
        state.revoke_jti("new", 300, 50).unwrap();
        // Another StateDir on the same folder (a restart) sees both.
        let again = StateDir::open(dir.path()).unwrap();
        let list = DenyList::from_data(&again.revocations(60).unwrap());
        assert!(list.denies("old", "s", "a", 0, 60));
        assert!(list.denies("new", "s", "a", 0, 60));
        // Once `old` has expired it is dropped from the file, not only ignored.
        assert_eq!(again.revocations(200).unwrap().len(), 1);
        assert_eq!(again.read_revocations().len(), 1);
        // Writing prunes too.
        state.revoke_jti("third", 500, 400).unwrap();
        let keys: Vec<_> = state.read_revocations().into_keys().collect();
        assert_eq!(keys, vec!["j.third".to_owned()]);
        assert!(state.revoke_jti("not/ours", 500, 400).is_err());
    }

    #[test]
    fn orphaned_secrets_and_statuses_go_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let data: BTreeMap<String, String> = [("k".to_owned(), "v".to_owned())].into();
        state
            .write_secret("team", "kept", "team/worker", &data)
            .unwrap();
        state
            .write_secret("team", "gone", "accesstoken:team/t", &data)
            .unwrap();
        state
            .write_secret(OPERATOR_NAMESPACE, "keys", OPERATOR_OWNER, &data)
            .unwrap();
        let live = ["team/worker".to_owned()].into();
        assert_eq!(state.remove_orphaned_secrets(&live).unwrap(), ["team/gone"]);
        assert!(state.read_secret("team", "gone").is_none());
        assert_eq!(state.owner_of("team", "gone"), None);
        assert_eq!(state.read_secret("team", "kept"), Some(data.clone()));
        assert_eq!(state.read_secret(OPERATOR_NAMESPACE, "keys"), Some(data));
        assert!(state.remove_orphaned_secrets(&live).unwrap().is_empty());

        let status = ServiceAccountStatus::default();
        state.write_status("team", "worker", &status).unwrap();
        state.write_status("team", "old", &status).unwrap();
        state
            .remove_statuses_except(SERVICE_ACCOUNTS, &["team/worker".to_owned()].into())
            .unwrap();
        assert!(state.read_status("team", "worker").is_some());
        assert!(state.read_status("team", "old").is_none());
        // No status folder of a kind yet: nothing to do.
        state
            .remove_statuses_except(TOKEN_GRANTS, &BTreeSet::new())
            .unwrap();
    }
}
