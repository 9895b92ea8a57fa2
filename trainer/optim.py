"""The Optax optimizer and learning-rate schedule named by `config.optimizer`."""
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")


def create_schedule(config, steps_per_epoch, total_steps):
    lr = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=config.warmup_steps, decay_steps=total_steps)
    # "step": multiply by decay_rate every decay_every_epochs epochs
    return optax.exponential_decay(lr, transition_steps=config.decay_every_epochs * steps_per_epoch,
                                   decay_rate=config.decay_rate, staircase=True)


def create_optimizer(config, steps_per_epoch, total_steps):
    """Returns (optax transformation, learning-rate schedule) for `config.optimizer`."""
    schedule = create_schedule(config, steps_per_epoch, total_steps)
    if config.name == "sgd":
        optimizer = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    elif config.name == "adam":
        optimizer = optax.adam(schedule, b1=config.b1, b2=config.b2)
    else:
        optimizer = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                                weight_decay=config.weight_decay)
    chain = []
    if config.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay and config.name != "adamw":  # adamw decays its own way (decoupled)
        chain.append(optax.add_decayed_weights(config.weight_decay))
    return optax.chain(*chain, optimizer), schedule
