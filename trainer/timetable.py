"""When the loop acts: one table of periods serves both "is it time?" and "how far may the steps
run before the loop must look?" (the fused path's chunk boundaries)."""
import dataclasses

from trainer import evals


def event(evaluation):
    """The event of an evaluation (an evals.Evaluation) in the table: "eval:val"."""
    return f"eval:{evaluation.name}"


@dataclasses.dataclass(frozen=True)
class Timetable:
    periods: dict  # event -> the step periods at whose multiples it happens (0: never)
    total_steps: int
    stops: tuple = ()  # more steps the steps must stop at, where nothing periodic is due

    @classmethod
    def from_config(cls, config, steps_per_epoch, total_steps):
        return cls({
            "log": (config.log_every_steps,),
            **{event(each): each.periods(steps_per_epoch) for each in evals.evaluations(config)},
            "checkpoint": (config.checkpoint_every_steps,),
            "epoch_end": (steps_per_epoch,),  # the data order changes there
        }, total_steps, tuple(config.profile_steps))

    def events_at(self, step):
        """The events due at `step`; at the last step, all of them."""
        if step == self.total_steps:
            return set(self.periods)
        return {event for event, periods in self.periods.items()
                if any(k and step % k == 0 for k in periods)}

    def next_boundary(self, step):
        """The first step after `step` at which some event is due."""
        return min([self.total_steps] + [(step // k + 1) * k for periods in self.periods.values()
                                         for k in periods if k]
                   + [s for s in self.stops if s > step])
