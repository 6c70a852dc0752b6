//! The `aud` of our access tokens: one audience, or several (RFC 8707 lets a client name
//! several `resource` / `audience` targets for one token). RFC 7519 §4.1.3 allows either a
//! string or an array; a token for one audience carries a plain string, as every earlier
//! version did, so nothing changes for single-audience verifiers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most audiences one token may name. A token for many targets is a token every one of them
/// can replay at the others; the cap keeps that set small.
pub const MAX_AUDIENCES: usize = 8;

/// One or more audiences, in the order asked for, without repeats. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience(Vec<String>);

impl Audience {
    /// A single audience.
    pub fn one(audience: impl Into<String>) -> Self {
        Self(vec![audience.into()])
    }

    /// Several audiences, repeats dropped (first occurrence kept); `None` when empty.
    pub fn many<I, S>(audiences: I) -> Option<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out: Vec<String> = Vec::new();
        for a in audiences {
            let a = a.into();
            if !out.contains(&a) {
                out.push(a);
            }
        }
        (!out.is_empty()).then_some(Self(out))
    }

    /// Every audience, in order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `audience` is one of them.
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }

    /// The first audience (the only one, for a single-audience token).
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// Every audience as `&str`.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl std::fmt::Display for Audience {
    /// Space-separated, as `scope` is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

impl From<&str> for Audience {
    fn from(a: &str) -> Self {
        Self::one(a)
    }
}

impl From<String> for Audience {
    fn from(a: String) -> Self {
        Self::one(a)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let list = match Raw::deserialize(d)? {
            Raw::One(a) => vec![a],
            Raw::Many(list) => list,
        };
        Self::many(list).ok_or_else(|| serde::de::Error::custom("aud is an empty list"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_audience_is_a_string_several_are_a_list() {
        assert_eq!(
            serde_json::to_value(Audience::one("https://a")).unwrap(),
            json!("https://a")
        );
        let two = Audience::many(["https://a", "https://b", "https://a"]).unwrap();
        assert_eq!(
            serde_json::to_value(&two).unwrap(),
            json!(["https://a", "https://b"])
        );
        assert_eq!(two.to_string(), "https://a https://b");
        assert!(two.contains("https://b") && !two.contains("https://c"));
    }

    #[test]
    fn both_forms_read_back_and_an_empty_list_does_not() {
        let one: Audience = serde_json::from_value(json!("x")).unwrap();
        assert_eq!(one, Audience::one("x"));
        let many: Audience = serde_json::from_value(json!(["x", "y"])).unwrap();
        assert_eq!(many.as_slice(), ["x", "y"]);
        let single_list: Audience = serde_json::from_value(json!(["x"])).unwrap();
        assert_eq!(single_list, one);
        assert!(serde_json::from_value::<Audience>(json!([])).is_err());
        assert!(serde_json::from_value::<Audience>(json!(3)).is_err());
        assert!(Audience::many(Vec::<String>::new()).is_none());
    }
}
