//! Pub/sub across the mesh without a broker.
//!
//! Subscriptions are advertised in the registry, so a publisher knows every subscriber. A message
//! goes straight to each subscribing node over one long-lived `Publish` stream per
//! (publisher, subscriber) pair:
//!
//! ```text
//! publisher -> subscriber: preamble(Publish) [Header(PublishHeader) Data(body)]*
//! subscriber -> publisher:                   [Header(PublishAck)]*   (for deliveries with ack)
//! ```
//!
//! **Ordering**: messages from one publisher node to one subscriber node are delivered to each
//! of that node's subscriptions in the order they were published (one stream, read in order).
//! Nothing is promised across publishers.
//!
//! **Bounds**: each link has a byte budget ([`LINK_BUDGET`]); a publish, fire-and-forget or
//! acknowledged, waits for room on a full link (backpressure) within its timeout, and a link that
//! stays full fails the publish for that node ([`PublishReport::failed`]). Each
//! subscription has a bounded queue; a message that finds it full is dropped and counted
//! ([`Subscription::dropped`]) and, if acknowledged, answered with a 429.

//! A publish fans out in `pubsub::publish` (`publish`): the registry's subscribers of the topic
//! go to the planner (`pubsub::plan`), which makes one delivery per node for its plain
//! subscribers and one member of each queue group, and, with acknowledgements, moves a failed
//! group delivery to another member of the group. Each delivery to another node is queued on that
//! node's link (`pubsub::links`); deliveries to this node go straight to its local subscribers
//! (`pubsub::local`), as deliveries from other nodes do when `pubsub::serve` reads them.

pub(crate) mod links;
pub(crate) mod local;
pub(crate) mod options;
pub(crate) mod plan;
pub(crate) mod publish;
pub(crate) mod serve;
pub(crate) mod subscription;

pub use links::LINK_BUDGET;
pub use options::{
    Delivery, Message, PublishOptions, PublishReport, SubscriberNext, SubscriberWrapper,
    DEFAULT_SUBSCRIPTION_QUEUE,
};
pub use subscription::Subscription;
