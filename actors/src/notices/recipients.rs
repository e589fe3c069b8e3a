//! Who hears a message on which channel: each recipient's preferences, critical overrides
//! and the SMS fallback.

use super::rules::{Channel, Kind, Priority};

/// A recipient's own choice for one kind of message on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub kind: Kind,
    pub channel: Channel,
    pub enabled: bool,
}

/// Someone who may be told about an event, with the addresses and choices the hub knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: String,
    /// Has at least one active device token.
    pub has_push: bool,
    pub preferences: Vec<Preference>,
}

impl Recipient {
    pub fn wants(&self, kind: Kind, channel: Channel) -> bool {
        self.preferences
            .iter()
            .find(|p| p.kind == kind && p.channel == channel)
            .map_or(kind.on_by_default(channel), |p| p.enabled)
    }

    fn address(&self, channel: Channel) -> Option<String> {
        match channel {
            Channel::InApp => Some(self.user_id.clone()),
            // Sent to every active device at send time.
            Channel::Push => self.has_push.then(|| self.user_id.clone()),
            Channel::Email => self.email.clone(),
            Channel::Sms => self.phone.clone(),
        }
    }
}

/// One message to send: becomes one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationIntent {
    pub recipient_id: String,
    pub channel: Channel,
    /// Delivery address on that channel.
    pub address: String,
    pub locale: String,
    pub priority: Priority,
    /// An SMS that stands behind this recipient's push: sent only if push has not delivered
    /// within the fallback time.
    pub fallback: bool,
}

/// The messages `kind` makes for its audience: each recipient's chosen channels; for a
/// critical message the default channels even where they opted out, and an SMS fallback
/// behind push for anyone with a phone who has not chosen SMS anyway.
pub fn intents(kind: Kind, audience: &[&Recipient]) -> Vec<NotificationIntent> {
    let priority = kind.rule().priority;
    let critical = priority == Priority::Critical;
    let mut out = Vec::new();
    for r in audience {
        let intent = |channel: Channel, address: String, fallback: bool| NotificationIntent {
            recipient_id: r.user_id.clone(),
            channel,
            address,
            locale: r.locale.clone(),
            priority,
            fallback,
        };
        let mut sms_chosen = false;
        for channel in Channel::ALL {
            let Some(address) = r.address(channel).filter(|_| kind.offers(channel)) else {
                continue;
            };
            if r.wants(kind, channel) || (critical && kind.on_by_default(channel)) {
                sms_chosen |= channel == Channel::Sms;
                out.push(intent(channel, address, false));
            }
        }
        if critical
            && !sms_chosen
            && let Some(phone) = r.address(Channel::Sms)
        {
            out.push(intent(Channel::Sms, phone, true));
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn person(id: &str, email: Option<&str>) -> Recipient {
        Recipient {
            user_id: id.into(),
            name: id.into(),
            email: email.map(Into::into),
            phone: None,
            locale: "en".into(),
            has_push: false,
            preferences: Vec::new(),
        }
    }

    fn on(intents: &[NotificationIntent], channel: Channel) -> Vec<(&str, &str, bool)> {
        intents
            .iter()
            .filter(|i| i.channel == channel)
            .map(|i| (i.recipient_id.as_str(), i.address.as_str(), i.fallback))
            .collect()
    }

    #[test]
    fn routine_news_comes_in_app_and_by_push_and_email_is_for_what_matters() {
        let g1 = Recipient {
            has_push: true,
            phone: Some("+15550001".into()),
            ..person("g1", Some("g1@example.org"))
        };
        let g2 = person("g2", None);
        let sent = intents(Kind::OrderReady, &[&g1, &g2]);
        assert_eq!(
            on(&sent, Channel::InApp),
            [("g1", "g1", false), ("g2", "g2", false)]
        );
        assert_eq!(on(&sent, Channel::Push), [("g1", "g1", false)]);
        assert!(on(&sent, Channel::Email).is_empty(), "routine: no email");
        assert!(on(&sent, Channel::Sms).is_empty(), "SMS is opt-in");
        assert!(sent.iter().all(|i| i.priority == Priority::Normal));
        // The rule over every kind: email by default exactly for high and critical news and
        // the digest; the digest comes by email only.
        for kind in Kind::ALL {
            let priority = kind.rule().priority;
            let digest = kind == Kind::DailyDigest;
            assert_eq!(
                kind.on_by_default(Channel::Email),
                digest || priority >= Priority::High,
                "{kind:?}"
            );
            let sign_in = kind == Kind::SignInCode;
            assert_eq!(
                kind.on_by_default(Channel::InApp),
                !digest && !sign_in,
                "{kind:?}"
            );
            assert_eq!(
                kind.on_by_default(Channel::Push),
                !digest && !sign_in,
                "{kind:?}"
            );
            assert!(!kind.on_by_default(Channel::Sms), "{kind:?}");
        }
        for kind in [Kind::OrderPlaced, Kind::OrderReady, Kind::OrderPickedUp] {
            assert!(
                on(&intents(kind, &[&g1]), Channel::Email).is_empty(),
                "{kind:?}"
            );
        }
        for kind in [
            Kind::OrderCancelled,
            Kind::OrderUncollected,
            Kind::CardInUse,
        ] {
            assert_eq!(
                on(&intents(kind, &[&g1]), Channel::Email),
                [("g1", "g1@example.org", false)],
                "{kind:?}"
            );
        }
        let digest = intents(Kind::DailyDigest, &[&g1, &g2]);
        assert_eq!(
            digest
                .iter()
                .map(|i| (i.recipient_id.as_str(), i.channel))
                .collect::<Vec<_>>(),
            [("g1", Channel::Email)],
            "the digest: one email, to whoever has an address"
        );
    }

    #[test]
    fn preferences_turn_routine_email_on_and_the_digest_off() {
        let choose = |kind, channel, enabled| Preference {
            kind,
            channel,
            enabled,
        };
        let g = Recipient {
            has_push: true,
            preferences: vec![
                choose(Kind::OrderPickedUp, Channel::Email, true),
                choose(Kind::DailyDigest, Channel::Email, false),
                // The digest has no other channel, whatever is stored.
                choose(Kind::DailyDigest, Channel::Push, true),
            ],
            ..person("g", Some("g@example.org"))
        };
        let picked_up = intents(Kind::OrderPickedUp, &[&g]);
        assert_eq!(
            on(&picked_up, Channel::Email),
            [("g", "g@example.org", false)]
        );
        assert_eq!(on(&picked_up, Channel::Push).len(), 1);
        assert!(on(&intents(Kind::OrderReady, &[&g]), Channel::Email).is_empty());
        assert!(intents(Kind::DailyDigest, &[&g]).is_empty());
    }

    #[test]
    fn preferences_choose_channels_per_kind() {
        let g = Recipient {
            phone: Some("+15550001".into()),
            preferences: vec![
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::Email,
                    enabled: true,
                },
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::Sms,
                    enabled: true,
                },
                Preference {
                    kind: Kind::OrderReady,
                    channel: Channel::InApp,
                    enabled: false,
                },
            ],
            ..person("g", Some("g@example.org"))
        };
        let ready = intents(Kind::OrderReady, &[&g]);
        assert_eq!(on(&ready, Channel::Email), [("g", "g@example.org", false)]);
        assert_eq!(on(&ready, Channel::Sms), [("g", "+15550001", false)]);
        assert!(on(&ready, Channel::InApp).is_empty());
        // Other kinds keep the defaults.
        assert!(on(&intents(Kind::OrderPlaced, &[&g]), Channel::Email).is_empty());
        let cancelled = intents(Kind::OrderCancelled, &[&g]);
        assert_eq!(on(&cancelled, Channel::Email).len(), 1);
        assert!(on(&cancelled, Channel::Sms).is_empty());
    }

    #[test]
    fn critical_messages_override_opt_outs_and_fall_back_to_sms() {
        let opted_out = Channel::ALL
            .into_iter()
            .map(|channel| Preference {
                kind: Kind::OrderUncollected,
                channel,
                enabled: false,
            })
            .collect();
        let g = Recipient {
            has_push: true,
            phone: Some("+15550001".into()),
            preferences: opted_out,
            ..person("g", Some("g@example.org"))
        };
        let sent = intents(Kind::OrderUncollected, &[&g]);
        assert_eq!(on(&sent, Channel::Push), [("g", "g", false)]);
        assert_eq!(on(&sent, Channel::Email).len(), 1);
        assert_eq!(on(&sent, Channel::InApp).len(), 1);
        assert_eq!(on(&sent, Channel::Sms), [("g", "+15550001", true)]);
        assert!(sent.iter().all(|i| i.priority == Priority::Critical));
        // Who chose SMS gets it at once, with no second copy behind push.
        let sms_fan = Recipient {
            preferences: vec![Preference {
                kind: Kind::OrderUncollected,
                channel: Channel::Sms,
                enabled: true,
            }],
            ..g.clone()
        };
        let sent = intents(Kind::OrderUncollected, &[&sms_fan]);
        assert_eq!(on(&sent, Channel::Sms), [("g", "+15550001", false)]);
        // Not critical: opting out is respected and nothing falls back.
        let ready_opt_out = Recipient {
            preferences: vec![Preference {
                kind: Kind::OrderReady,
                channel: Channel::Push,
                enabled: false,
            }],
            ..g
        };
        let sent = intents(Kind::OrderReady, &[&ready_opt_out]);
        assert!(on(&sent, Channel::Push).is_empty() && on(&sent, Channel::Sms).is_empty());
    }
}
