//! Image-aware defaults: what a container image's own configuration says its user is, and what the engine does
//! with it. This module is pure: [`lookup`] reads the configurations from registries, and hands the engine an
//! [`Images`] for each review.
//!
//! A container without its own `runAsUser`, in a pod without one, runs as its image's `USER`:
//! - a numeric user other than 0 (`1001`, `1001:1001`): the engine states it on the container (`runAsUser`, and
//!   `runAsGroup` where the image gives a group), so the pod-level default does not override what the image was
//!   built for, and `runAsNonRoot` can be verified;
//! - root (`0`, `root`, `0:0`, or no `USER` at all): the policy's `images.root` chooses: `default` (the pod-level
//!   default applies, as without images) or `keep` (the engine states `runAsUser: 0` on that container, so it
//!   keeps running as root while the others get the default);
//! - a name (`nginx`, `app:app`): the kubelet cannot verify it against `runAsNonRoot`; the default applies, with a
//!   warning naming the image and its user;
//! - not known (the registry is slow, down, refuses us, is not allowed, or the image is not there): the default
//!   applies, with one warning, and the reason is counted.

pub mod lookup;
mod section;

use std::collections::BTreeMap;
use std::fmt;

pub use section::{ImagesPolicy, Platform, RootImages};

/// What an image's configuration says about its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageUser {
    /// A numeric user other than 0, with a numeric group where the image gives one.
    Id {
        /// The user ID.
        uid: i64,
        /// The group ID, where the image states a numeric one.
        gid: Option<i64>,
    },
    /// Root: user 0 (whatever the group), the name `root`, or no user at all.
    Root,
    /// A user the kubelet cannot verify: a name, or a number with a named group.
    Name(String),
}

impl ImageUser {
    /// Reads the `User` of an OCI image configuration (`config.User`): `UID`, `UID:GID`, `name`, `name:group`, or
    /// empty (root).
    pub fn parse(user: &str) -> ImageUser {
        let user = user.trim();
        let (name, group) = match user.split_once(':') {
            Some((name, group)) => (name, Some(group)),
            None => (user, None),
        };
        if name.is_empty() || name == "root" {
            return ImageUser::Root;
        }
        let id = |text: &str| {
            text.parse::<i64>()
                .ok()
                .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
        };
        match (id(name), group.map(id)) {
            (Some(0), _) => ImageUser::Root,
            (Some(uid), None) => ImageUser::Id { uid, gid: None },
            (Some(uid), Some(Some(gid))) => ImageUser::Id {
                uid,
                gid: Some(gid),
            },
            _ => ImageUser::Name(user.to_owned()),
        }
    }
}

impl fmt::Display for ImageUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageUser::Id { uid, gid: None } => write!(f, "{uid}"),
            ImageUser::Id {
                uid,
                gid: Some(gid),
            } => write!(f, "{uid}:{gid}"),
            ImageUser::Root => f.write_str("root"),
            ImageUser::Name(name) => f.write_str(name),
        }
    }
}

/// Why an image's user is not known. Bounded: each is a metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unknown {
    /// The lookup did not finish within the review's time budget.
    Timeout,
    /// The registry refused our credentials, or asked for some we do not have.
    Unauthorized,
    /// The registry has no such image (or no manifest for the pod's platform).
    NotFound,
    /// The image's registry is not in `images.registries`.
    NotAllowed,
    /// A manifest or configuration larger than we read.
    TooLarge,
    /// The image reference cannot be read.
    BadReference,
    /// Anything else: a connection refused, a TLS failure, an answer that is not an image.
    Failed,
}

impl Unknown {
    /// Every reason, for metrics.
    pub const ALL: [Unknown; 7] = [
        Unknown::Timeout,
        Unknown::Unauthorized,
        Unknown::NotFound,
        Unknown::NotAllowed,
        Unknown::TooLarge,
        Unknown::BadReference,
        Unknown::Failed,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::Timeout => "timeout",
            Unknown::Unauthorized => "unauthorized",
            Unknown::NotFound => "not_found",
            Unknown::NotAllowed => "not_allowed",
            Unknown::TooLarge => "too_large",
            Unknown::BadReference => "bad_reference",
            Unknown::Failed => "failed",
        }
    }
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unknown::Timeout => "the registry did not answer in time",
            Unknown::Unauthorized => "the registry refused the credentials",
            Unknown::NotFound => "no such image",
            Unknown::NotAllowed => "its registry is not in images.registries",
            Unknown::TooLarge => "its manifest or configuration is too large",
            Unknown::BadReference => "the image reference cannot be read",
            Unknown::Failed => "the registry could not be read",
        })
    }
}

/// What the lookups found for one pod's images, by image reference as the pod names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Images {
    /// Each image's user, or why it is not known.
    pub users: BTreeMap<String, Result<ImageUser, Unknown>>,
    /// What a root image gets.
    pub root: RootImages,
}

impl Images {
    /// What the engine states on a container that runs `image` and has no `runAsUser` of its own (nor does its
    /// pod): the user and group to set, and the warning to give. `None` for an image nothing was looked up for.
    pub fn decide(&self, container: &str, image: &str) -> Option<ImageDecision> {
        let found = self.users.get(image)?;
        Some(match found {
            Ok(ImageUser::Id { uid, gid }) => ImageDecision {
                set: Some((*uid, *gid)),
                note: format!(
                    "container {container:?} runs as its image's user {}, from {image}",
                    found.as_ref().map(ToString::to_string).unwrap_or_default()
                ),
            },
            Ok(ImageUser::Root) => match self.root {
                RootImages::Keep => ImageDecision {
                    set: Some((0, None)),
                    note: format!(
                        "container {container:?} keeps its image's user root (images.root: keep), from {image}"
                    ),
                },
                RootImages::Default => ImageDecision {
                    set: None,
                    note: format!(
                        "container {container:?}: its image {image} runs as root; the pod's runAsUser applies to it"
                    ),
                },
            },
            Ok(ImageUser::Name(name)) => ImageDecision {
                set: None,
                note: format!(
                    "container {container:?}: its image {image} runs as {name:?}, a name the kubelet cannot verify; the pod's runAsUser applies to it"
                ),
            },
            Err(why) => ImageDecision {
                set: None,
                note: format!(
                    "container {container:?}: the user of its image {image} is not known ({why}); the pod's runAsUser applies to it"
                ),
            },
        })
    }
}

/// What the engine does for one container from its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDecision {
    /// The `runAsUser` (and `runAsGroup`) to state on the container, if any.
    pub set: Option<(i64, Option<i64>)>,
    /// The warning that says so.
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_as_the_kubelet_reads_them() {
        let id = |uid, gid| ImageUser::Id { uid, gid };
        let cases = [
            ("1001", id(1001, None)),
            ("1001:1001", id(1001, Some(1001))),
            (" 65532:65533 ", id(65532, Some(65533))),
            ("1001:staff", ImageUser::Name("1001:staff".to_owned())),
            ("0", ImageUser::Root),
            ("0:1000", ImageUser::Root),
            ("root", ImageUser::Root),
            ("root:root", ImageUser::Root),
            ("", ImageUser::Root),
            ("nginx", ImageUser::Name("nginx".to_owned())),
            ("app:app", ImageUser::Name("app:app".to_owned())),
            ("-1", ImageUser::Name("-1".to_owned())),
            ("4294967296", ImageUser::Name("4294967296".to_owned())),
        ];
        for (text, want) in cases {
            assert_eq!(ImageUser::parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn decisions_name_the_container_and_the_image() {
        let mut images = Images::default();
        images.users.insert(
            "a:1".into(),
            Ok(ImageUser::Id {
                uid: 1001,
                gid: Some(7),
            }),
        );
        images.users.insert("r:1".into(), Ok(ImageUser::Root));
        images
            .users
            .insert("n:1".into(), Ok(ImageUser::Name("app".into())));
        images.users.insert("x:1".into(), Err(Unknown::Timeout));
        let a = images.decide("web", "a:1").unwrap();
        assert_eq!(a.set, Some((1001, Some(7))));
        assert!(
            a.note
                .contains("\"web\" runs as its image's user 1001:7, from a:1"),
            "{}",
            a.note
        );
        assert_eq!(images.decide("db", "r:1").unwrap().set, None);
        assert!(images.decide("n", "n:1").unwrap().note.contains("\"app\""));
        assert!(
            images
                .decide("x", "x:1")
                .unwrap()
                .note
                .contains("did not answer in time")
        );
        assert_eq!(images.decide("y", "unlooked:1"), None);
        images.root = RootImages::Keep;
        assert_eq!(images.decide("db", "r:1").unwrap().set, Some((0, None)));
    }
}
