"""Kernel states passed by reference.

Numba passes a NamedTuple by value: every field of every array in it is
an argument of its own.  A port's state holds dozens of arrays, so a
kernel call that LLVM does not inline copies hundreds of words (the
vhost-pci port's: ~390; a stream holds two states) -- on the forwarding
loop's path, ~1600 words a burst: at a store a cycle, about as much as
the packets themselves cost at 64 B (~50 against 55-59 cycles a packet).

``refs_of(values)`` stores each NamedTuple of a tuple once in the
caller's frame and returns a tuple of ``Ref``\\s: one pointer each.  A
``Ref`` reads like the value it points to: ``r.field`` loads that field
(an array, a number), or is a ``Ref`` itself when the field is a
NamedTuple (``stream.rx.mem.u8``), so kernels written for values run
unchanged on references.  Only reading: a referenced state is never
written whole, as a state value never is.

A ``Ref`` lives as long as the frame that made it: make it where the
value lives for the whole run (the forwarding loop's entry) and pass it
down, never return it.
"""
from __future__ import annotations

from numba.core import cgutils, types
from numba.core.datamodel import models
from numba.core.imputils import impl_ret_borrowed, lower_getattr_generic
from numba.core.typing.templates import AttributeTemplate
from numba.extending import infer_getattr, intrinsic, register_model


class Ref(types.Type):
    """Numba type: a pointer to a NamedTuple value of type ``target``."""

    def __init__(self, target: types.BaseNamedTuple) -> None:
        self.target = target
        super().__init__(name=f"Ref({target})")

    @property
    def instance_class(self):
        """The NamedTuple class referenced (what ``pmd.burst`` dispatches on)."""
        return self.target.instance_class

    @property
    def fields(self):
        """The NamedTuple's field names (what ``pmd.burst`` looks for ``stats`` in)."""
        return self.target.fields


@register_model(Ref)
class _RefModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, dmm.lookup(fe_type.target).get_value_type().as_pointer())


def _field_type(target: types.BaseNamedTuple, attr: str):
    return target[target.fields.index(attr)]


def _as_ref(typ):
    return Ref(typ) if isinstance(typ, types.BaseNamedTuple) else typ


@infer_getattr
class _RefAttributes(AttributeTemplate):
    key = Ref

    def generic_resolve(self, typ, attr):
        if attr in typ.target.fields:
            return _as_ref(_field_type(typ.target, attr))
        return None


@lower_getattr_generic(Ref)
def _ref_getattr(context, builder, typ, value, attr):
    i = typ.target.fields.index(attr)
    ptr = cgutils.gep_inbounds(builder, value, 0, i)
    ft = _field_type(typ.target, attr)
    if isinstance(ft, types.BaseNamedTuple):
        return ptr
    return impl_ret_borrowed(context, builder, ft, builder.load(ptr))


def _store(context, builder, typ, value):
    """``value`` in a slot of the caller's frame (its entry block: one slot
    however often the code runs); returns the slot, or ``value`` itself
    if it is not a NamedTuple."""
    if not isinstance(typ, types.BaseNamedTuple):
        return value
    slot = cgutils.alloca_once(builder, context.get_value_type(typ))
    builder.store(value, slot)
    return slot


@intrinsic(prefer_literal=False)
def refs_of(typingctx, values):
    """A tuple of ``Ref``\\s to the NamedTuples of tuple ``values`` (any
    other element is passed as it is), stored in the caller's frame."""
    if not isinstance(values, types.BaseTuple):
        return None

    def codegen(context, builder, sig, args):
        items = [_store(context, builder, t, builder.extract_value(args[0], k)) for k, t in enumerate(sig.args[0])]
        return context.make_tuple(builder, sig.return_type, items)

    return types.Tuple([_as_ref(t) for t in values])(values), codegen


@intrinsic(prefer_literal=False)
def ref_of(typingctx, value):
    """A ``Ref`` to NamedTuple ``value``, stored in the caller's frame."""
    if not isinstance(value, types.BaseNamedTuple):
        return None

    def codegen(context, builder, sig, args):
        return _store(context, builder, sig.args[0], args[0])

    return Ref(value)(value), codegen
