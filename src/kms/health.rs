//! What a KMS key's state means for the resources wrapped under it: a
//! bounded set of states ([`KeyHealth`]) from `DescribeKey`'s answer or
//! its error, whether a copy under the key can still be unwrapped, and the
//! condition reason a resource gets when no copy can.

use super::{KeyInfo, KmsError};

/// A key's state as far as its dependents are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHealth {
    Enabled,
    Disabled,
    /// Scheduled for deletion; the date (RFC 3339) when KMS says it.
    PendingDeletion(Option<String>),
    PendingReplicaDeletion,
    PendingImport,
    Unavailable,
    NotFound,
    AccessDenied,
    /// `DescribeKey` failed otherwise (throttled, unreachable): not known.
    Unknown,
}

impl KeyHealth {
    /// From a `DescribeKey` answer (KMS `KeyState`).
    pub fn of(info: &KeyInfo) -> KeyHealth {
        match info.state.as_str() {
            "Enabled" => KeyHealth::Enabled,
            "Disabled" => KeyHealth::Disabled,
            "PendingDeletion" => KeyHealth::PendingDeletion(info.deletion_date.clone()),
            "PendingReplicaDeletion" => KeyHealth::PendingReplicaDeletion,
            "PendingImport" => KeyHealth::PendingImport,
            "Unavailable" => KeyHealth::Unavailable,
            // Creating, Updating: transitional, the key still works
            _ if info.enabled => KeyHealth::Enabled,
            _ => KeyHealth::Unavailable,
        }
    }

    /// From a failed `DescribeKey`.
    pub fn of_error(e: &KmsError) -> KeyHealth {
        match e {
            KmsError::NotFound(_) => KeyHealth::NotFound,
            KmsError::AccessDenied(_) => KeyHealth::AccessDenied,
            KmsError::KeyDisabled(_) => KeyHealth::Disabled,
            _ => KeyHealth::Unknown,
        }
    }

    /// Whether a copy under the key can be unwrapped (an unknown state is
    /// given the benefit of the doubt: no alarm on a throttled check).
    pub fn is_healthy(&self) -> bool {
        matches!(self, KeyHealth::Enabled | KeyHealth::Unknown)
    }

    /// Whether data keys unwrapped under the key must stop working now:
    /// cached copies are evicted (revocation takes effect at the next
    /// check, not at the cache TTL).
    pub fn revokes(&self) -> bool {
        matches!(
            self,
            KeyHealth::Disabled | KeyHealth::PendingDeletion(_) | KeyHealth::NotFound
        )
    }

    /// The bounded state name (metric label, table column).
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyHealth::Enabled => "Enabled",
            KeyHealth::Disabled => "Disabled",
            KeyHealth::PendingDeletion(_) => "PendingDeletion",
            KeyHealth::PendingReplicaDeletion => "PendingReplicaDeletion",
            KeyHealth::PendingImport => "PendingImport",
            KeyHealth::Unavailable => "Unavailable",
            KeyHealth::NotFound => "NotFound",
            KeyHealth::AccessDenied => "AccessDenied",
            KeyHealth::Unknown => "Unknown",
        }
    }

    /// Every state name (metrics are pre-registered with these).
    pub const ALL: [&'static str; 9] = [
        "Enabled",
        "Disabled",
        "PendingDeletion",
        "PendingReplicaDeletion",
        "PendingImport",
        "Unavailable",
        "NotFound",
        "AccessDenied",
        "Unknown",
    ];

    /// The `KeysHealthy=False` reason of a resource whose every copy is
    /// under a key in this state.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyHealth::PendingDeletion(_) | KeyHealth::PendingReplicaDeletion => {
                "KeyPendingDeletion"
            }
            KeyHealth::Disabled => "KeyDisabled",
            KeyHealth::NotFound => "KeyNotFound",
            KeyHealth::AccessDenied => "KeyAccessDenied",
            KeyHealth::PendingImport | KeyHealth::Unavailable => "KeyUnavailable",
            KeyHealth::Enabled | KeyHealth::Unknown => "KeysHealthy",
        }
    }

    /// The deletion date, when scheduled.
    pub fn deletion_date(&self) -> Option<&str> {
        match self {
            KeyHealth::PendingDeletion(d) => d.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state: &str, enabled: bool) -> KeyInfo {
        KeyInfo {
            key_id: "k".into(),
            arn: "arn".into(),
            enabled,
            state: state.into(),
            deletion_date: Some("2027-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn states_map_to_health_reason_and_revocation() {
        let cases = [
            ("Enabled", true, "Enabled", true, false, "KeysHealthy"),
            ("Disabled", false, "Disabled", false, true, "KeyDisabled"),
            (
                "PendingDeletion",
                false,
                "PendingDeletion",
                false,
                true,
                "KeyPendingDeletion",
            ),
            (
                "PendingReplicaDeletion",
                false,
                "PendingReplicaDeletion",
                false,
                false,
                "KeyPendingDeletion",
            ),
            (
                "PendingImport",
                false,
                "PendingImport",
                false,
                false,
                "KeyUnavailable",
            ),
            (
                "Unavailable",
                false,
                "Unavailable",
                false,
                false,
                "KeyUnavailable",
            ),
            ("Creating", true, "Enabled", true, false, "KeysHealthy"),
        ];
        for (state, enabled, name, healthy, revokes, reason) in cases {
            let h = KeyHealth::of(&info(state, enabled));
            assert_eq!(h.as_str(), name, "{state}");
            assert_eq!(h.is_healthy(), healthy, "{state}");
            assert_eq!(h.revokes(), revokes, "{state}");
            assert_eq!(h.reason(), reason, "{state}");
            assert!(KeyHealth::ALL.contains(&h.as_str()));
        }
        assert_eq!(
            KeyHealth::of(&info("PendingDeletion", false)).deletion_date(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            KeyHealth::of_error(&KmsError::NotFound("x".into())),
            KeyHealth::NotFound
        );
        assert!(KeyHealth::of_error(&KmsError::Unavailable("x".into())).is_healthy());
    }
}
