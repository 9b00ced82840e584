//! A function's triggers on its page: the webhooks that call it, its schedules and its event
//! subscriptions, each linking to where it is managed (`/ui/webhooks/{id}`, the schedules and
//! events pages). Read with the stores the API lists them with.

use maud::{Markup, html};

use super::{BASE, UiError, fmt_time};
use crate::event::store as events;
use crate::function::Function;
use crate::producer::AppState;
use crate::producer::cron::store as schedules;
use crate::webhook::store as webhooks;

/// The "Triggers" section of function `f`'s page.
#[tracing::instrument(skip_all, fields(function = %f.name))]
pub(crate) async fn section(app: &AppState, f: &Function) -> Result<Markup, UiError> {
    let hooks = webhooks::list(&app.pool, Some(&f.name)).await?;
    let timed = schedules::list(&app.pool, Some(&f.name)).await?;
    let subscribed = events::subscriptions(&app.pool, Some(&f.name)).await?;
    let public = app.settings.public_url();
    Ok(html! {
        h2 { "Triggers" }
        div.card #triggers {
            h3 { "Webhooks" }
            @if hooks.is_empty() {
                p.muted #no-webhooks { "None. " a href={ (BASE) "/webhooks" } { "Make one." } }
            } @else {
                ul #function-webhooks {
                    @for h in &hooks {
                        li {
                            a href={ (BASE) "/webhooks/" (h.id) } { code { (public) "/hooks/" (h.id) } }
                            " · " (h.scheme) " · made " (fmt_time(Some(h.created_at)))
                        }
                    }
                }
            }
            h3 { "Schedules" }
            @if timed.is_empty() {
                p.muted #no-schedules { "None. " a href={ (BASE) "/schedules" } { "Make one." } }
            } @else {
                ul #function-schedules {
                    @for s in &timed {
                        li {
                            a href={ (BASE) "/schedules#schedule-" (s.id) } { code { (s.cron) } " (" (s.timezone) ")" }
                            " · " @if s.enabled { "enabled" } @else { "paused" }
                            @if let Some(last) = s.last_fired_at { " · last fired " (fmt_time(Some(last))) }
                        }
                    }
                }
            }
            h3 { "Event subscriptions" }
            @if subscribed.is_empty() {
                p.muted #no-subscriptions { "None. " a href={ (BASE) "/events" } { "Subscribe it to a topic." } }
            } @else {
                ul #function-subscriptions {
                    @for s in &subscribed {
                        li {
                            a href={ (BASE) "/events#subscription-" (s.id) } { code { (s.pattern) } }
                            " · made " (fmt_time(Some(s.created_at)))
                        }
                    }
                }
            }
        }
    })
}
