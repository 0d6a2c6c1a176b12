//! The operator: watches EncryptedSecrets and owns their Secrets.

pub mod secret;
