//! Layer identities, as plain strings in newtypes so the two are not mixed
//! up. haul-xfer never computes or parses digests; the layer store does.

use std::fmt;

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Wraps a digest string such as `sha256:68e2c75d…`.
            pub fn new(digest: impl Into<String>) -> Self {
                $name(digest.into())
            }

            /// The digest string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The digest string, by value.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(digest: String) -> Self {
                $name(digest)
            }
        }

        impl From<&str> for $name {
            fn from(digest: &str) -> Self {
                $name(digest.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

digest_newtype!(
    /// The digest of a layer's uncompressed content (its tar stream).
    DiffId
);

digest_newtype!(
    /// The identity of a layer together with everything under it:
    /// `chain(1) = diffID(1)`, `chain(n) = sha256(chain(n-1) + " " + diffID(n))`.
    /// Computed by the [`LayerStore`](crate::LayerStore).
    ChainId
);
